import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { encodeMessage, MsgType } from '../../shared/messages.js';

/**
 * Support for the broker tests: real MQTT.js clients (protocol 3.1.1), real redis-server and
 * mosquitto processes on free ports, and the role × topic matrix both brokers are checked against.
 */
export const SAFETY_MS = 20_000;

export function tmpDir(name: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `ferry-${name}-`));
}

/** Connects and resolves on CONNACK; rejects with the broker's refusal (e.g. "Bad username or password"). */
export function connect(url: string, opts: IClientOptions = {}): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: SAFETY_MS, ...opts });
    const fail = (err: Error) => {
      c.end(true);
      reject(err);
    };
    c.once('connect', () => {
      c.off('error', fail);
      resolve(c);
    });
    c.once('error', fail);
  });
}

export function end(...clients: (MqttClient | undefined)[]): Promise<void> {
  return Promise.all(clients.map((c) => (c ? new Promise<void>((r) => c.end(true, {}, () => r())) : undefined))).then(() => {});
}

/** Subscribes and returns the granted QoS per filter (128 = refused). */
export function subscribe(c: MqttClient, filter: string | string[], qos: 0 | 1 = 1): Promise<number[]> {
  return new Promise((resolve, reject) => {
    c.subscribe(filter, { qos }, (err, granted) => {
      // MQTT.js reports any 0x80 in the SUBACK as an error carrying the packet's granted codes.
      const codes = (err as { packet?: { granted?: number[] } } | null)?.packet?.granted;
      if (codes) return resolve(codes);
      if (err) return reject(err);
      resolve((granted ?? []).map((g) => g.qos));
    });
  });
}

export function publish(c: MqttClient, topic: string, payload: Buffer | string, opts: { qos?: 0 | 1; retain?: boolean } = {}): Promise<void> {
  return new Promise((resolve, reject) => c.publish(topic, payload, { qos: opts.qos ?? 1, retain: opts.retain ?? false }, (err) => (err ? reject(err) : resolve())));
}

/** Resolves with the first message on a topic matching `pred`. */
export function nextMessage(c: MqttClient, pred: (topic: string, payload: Buffer) => boolean): Promise<{ topic: string; payload: Buffer; retain: boolean }> {
  return new Promise((resolve) => {
    const on = (topic: string, payload: Buffer, packet: { retain?: boolean }) => {
      if (!pred(topic, payload)) return;
      c.off('message', on);
      resolve({ topic, payload, retain: packet.retain === true });
    };
    c.on('message', on);
  });
}

export function closed(c: MqttClient): Promise<void> {
  return new Promise((resolve) => (c.connected ? c.once('close', () => resolve()) : resolve()));
}

/** A valid ~`size`-byte up message (an Ack with a selective bitmap), so it passes the broker's CBOR check. */
export function upPayload(size = 64): Buffer {
  return encodeMessage({ type: MsgType.ack, session: 1, base: 0, bitmap: Buffer.alloc(Math.max(1, size - 12)) });
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export function findBinary(name: string): string | undefined {
  for (const dir of ['/usr/sbin', '/usr/bin', '/usr/local/sbin', '/usr/local/bin', ...(process.env.PATH ?? '').split(':')]) {
    const p = path.join(dir, name);
    if (fs.existsSync(p)) return p;
  }
  return undefined;
}

/** Waits until a TCP port accepts connections (the process's own readiness signal). */
async function waitForPort(port: number, proc: ChildProcess, what: string, logs: () => string): Promise<void> {
  const deadline = Date.now() + SAFETY_MS;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`${what} exited with ${proc.exitCode}: ${logs()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} did not open port ${port}: ${logs()}`);
}

export interface Service {
  port: number;
  url: string;
  stop(): Promise<void>;
}

function stopProcess(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    proc.once('exit', () => resolve());
    proc.kill('SIGTERM');
  });
}

export async function startRedis(bin: string): Promise<Service> {
  const port = await freePort();
  const dir = tmpDir('redis');
  let out = '';
  const proc = spawn(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  await waitForPort(port, proc, 'redis-server', () => out);
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      await stopProcess(proc);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function startMosquitto(bin: string, files: { acl: string; passwd: string }, dir: string): Promise<Service & { log(): string }> {
  return startMosquittoWith(bin, dir, (port) =>
    [`per_listener_settings false`, `listener ${port} 127.0.0.1`, `allow_anonymous true`, `password_file ${files.passwd}`, `acl_file ${files.acl}`, `persistence false`, `log_dest stderr`, `log_type error`, `log_type warning`].join('\n') + '\n',
  );
}

/** Starts mosquitto with the configuration `conf(port)` returns, on a free port, written to `dir`. */
export async function startMosquittoWith(bin: string, dir: string, conf: (port: number) => string): Promise<Service & { log(): string }> {
  const port = await freePort();
  const file = path.join(dir, 'mosquitto.conf');
  fs.writeFileSync(file, conf(port));
  let out = '';
  const proc = spawn(bin, ['-c', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  await waitForPort(port, proc, 'mosquitto', () => out);
  return { port, url: `mqtt://127.0.0.1:${port}`, log: () => out, stop: () => stopProcess(proc) };
}

export function mosquittoPasswd(bin: string, file: string, users: { username: string; password: string }[]): void {
  fs.writeFileSync(file, '');
  for (const u of users) {
    const r = spawnSync(bin, ['-b', file, u.username, u.password], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`mosquitto_passwd failed: ${r.stderr}`);
  }
}

// ---------------------------------------------------------------------------------------------
// The role × topic matrix. Written out by hand (not computed from broker/acl.ts) so the test checks
// the ACL against the documented table instead of against itself.

export type Actor = 'node1' | 'node2' | 'agentAll' | 'agentN2' | 'agentG' | 'agentGlob' | 'operator' | 'anonymous';
export const ACTORS: Actor[] = ['node1', 'node2', 'agentAll', 'agentN2', 'agentG', 'agentGlob', 'operator', 'anonymous'];

/**
 * node-1 is in group "g1", node-2 in "g2"; agent-n2 serves node-2 by id; agent-g serves group:g1
 * (so node-1 and the g1 downlink); agent-glob serves the glob `*-2` (node-2, by id only: no group).
 */
export const IDENTITIES = {
  node1: { role: 'node', username: 'node-1', groups: ['g1'] },
  node2: { role: 'node', username: 'node-2', groups: ['g2'] },
  agentAll: { role: 'agent', username: 'agent-all', serves: ['*'] },
  agentN2: { role: 'agent', username: 'agent-n2', serves: ['node-2'] },
  agentG: { role: 'agent', username: 'agent-g', serves: ['group:g1'] },
  agentGlob: { role: 'agent', username: 'agent-glob', serves: ['*-2'] },
  operator: { role: 'operator', username: 'op-1' },
} as const;

export interface MatrixTopic {
  name: string;
  topic: (p: string) => string;
  payload: () => Buffer;
  retain?: boolean;
  /** Who may publish / subscribe, per the table in docs/broker.md. */
  pub: Actor[];
  sub: Actor[];
  /** Who watches for publications in the publish half of the matrix (must be in `sub`). */
  observer: Actor;
}

const CHUNKISH = () => Buffer.from([0xa1, 0x00, 0x13]);
const ALL_AGENTS: Actor[] = ['agentAll', 'agentN2', 'agentG', 'agentGlob'];

/**
 * One row per topic kind the issue names, for the node that owns it and for the other one: a node's
 * own up/dn against another node's, group downlinks for a member and a non-member, status and
 * presence, release topics, ferry topics outside the table, and plain topics.
 */
export const MATRIX: MatrixTopic[] = [
  { name: 'up of node-1', topic: (p) => `${p}/d/node-1/up`, payload: () => upPayload(), pub: ['node1'], sub: ['agentAll', 'agentG'], observer: 'agentAll' },
  { name: 'dn of node-1', topic: (p) => `${p}/d/node-1/dn`, payload: CHUNKISH, pub: ['agentAll', 'agentG'], sub: ['node1'], observer: 'node1' },
  { name: 'status of node-1', topic: (p) => `${p}/d/node-1/status`, payload: () => Buffer.from('{"id":"node-1"}'), pub: ['agentAll', 'agentG'], sub: ['agentAll', 'agentG', 'operator'], observer: 'operator' },
  { name: 'presence of node-1', topic: (p) => `${p}/d/node-1/presence`, payload: () => Buffer.from('online'), pub: [], sub: ['agentAll', 'agentG', 'operator'], observer: 'operator' },
  { name: 'up of node-2', topic: (p) => `${p}/d/node-2/up`, payload: () => upPayload(), pub: ['node2'], sub: ['agentAll', 'agentN2', 'agentGlob'], observer: 'agentAll' },
  { name: 'dn of node-2', topic: (p) => `${p}/d/node-2/dn`, payload: CHUNKISH, pub: ['agentAll', 'agentN2', 'agentGlob'], sub: ['node2'], observer: 'node2' },
  { name: 'status of node-2', topic: (p) => `${p}/d/node-2/status`, payload: () => Buffer.from('{"id":"node-2"}'), pub: ['agentAll', 'agentN2', 'agentGlob'], sub: ['agentAll', 'agentN2', 'agentGlob', 'operator'], observer: 'operator' },
  { name: 'presence of node-2', topic: (p) => `${p}/d/node-2/presence`, payload: () => Buffer.from('offline'), pub: [], sub: ['agentAll', 'agentN2', 'agentGlob', 'operator'], observer: 'operator' },
  { name: 'up of an unprovisioned id', topic: (p) => `${p}/d/node-9/up`, payload: () => upPayload(), pub: [], sub: ['agentAll'], observer: 'agentAll' },
  { name: 'dn of group g1', topic: (p) => `${p}/g/g1/dn`, payload: CHUNKISH, pub: ['agentAll', 'agentG'], sub: ['node1'], observer: 'node1' },
  { name: 'dn of group g2', topic: (p) => `${p}/g/g2/dn`, payload: CHUNKISH, pub: ['agentAll'], sub: ['node2'], observer: 'node2' },
  { name: 'release manifest', topic: (p) => `${p}/r/hw1/1.0.0/manifest`, payload: () => Buffer.alloc(200, 1), pub: ['operator'], sub: [...ALL_AGENTS, 'operator'], observer: 'agentAll' },
  { name: 'release part', topic: (p) => `${p}/r/hw1/1.0.0/part/0`, payload: () => Buffer.alloc(1000, 2), pub: ['operator'], sub: [...ALL_AGENTS, 'operator'], observer: 'agentAll' },
  { name: "agent-n2's release status", topic: (p) => `${p}/r/hw1/1.0.0/status/agent-n2`, payload: () => Buffer.from('{"state":"accepted"}'), pub: ['agentN2'], sub: [...ALL_AGENTS, 'operator'], observer: 'operator' },
  { name: 'release withdraw marker', topic: (p) => `${p}/r/hw1/1.0.0/withdrawn`, payload: () => Buffer.from('{"at":1}'), pub: ['operator'], sub: [...ALL_AGENTS, 'operator'], observer: 'agentAll' },
  { name: 'info of node-1 (the broker writes it)', topic: (p) => `${p}/d/node-1/info`, payload: () => Buffer.from('{"v":1,"groups":["admin"]}'), pub: [], sub: ['agentAll', 'agentG', 'operator'], observer: 'operator' },
  { name: 'rollout document', topic: (p) => `${p}/rollout/r1`, payload: () => Buffer.from('{"doc":"{}","kid":"","sig":""}'), pub: ['operator'], sub: [...ALL_AGENTS, 'operator'], observer: 'agentAll' },
  { name: "agent-n2's rollout state", topic: (p) => `${p}/rollout/r1/state/agent-n2`, payload: () => Buffer.from('{"v":1}'), pub: ['agentN2'], sub: [...ALL_AGENTS, 'operator'], observer: 'operator' },
  { name: 'unknown ferry topic', topic: (p) => `${p}/x/y`, payload: () => Buffer.from('x'), pub: [], sub: [], observer: 'agentAll' },
  { name: 'the prefix itself', topic: (p) => p, payload: () => Buffer.from('x'), pub: [], sub: [], observer: 'agentAll' },
  { name: 'outside the prefix', topic: () => `plain/room/temp`, payload: () => Buffer.from('21.5'), pub: ACTORS, sub: ACTORS, observer: 'operator' },
];

type Tap = Pick<Test, 'equal'>;

/** Connects every actor with its credentials (anonymous: none) and a unique client id. */
export async function connectActors(url: string, creds: Partial<Record<Actor, { username: string; password: string }>>): Promise<Record<Actor, MqttClient>> {
  const out = {} as Record<Actor, MqttClient>;
  for (const a of ACTORS) {
    const c = creds[a];
    // Nodes must use their device id as client id; others get a fresh one.
    out[a] = await connect(url, c ? { username: c.username, password: c.password, clientId: a.startsWith('node') ? c.username : `${c.username}-t` } : { clientId: `anon-${a}-${process.pid}` });
  }
  return out;
}

/**
 * Checks every role × topic pair on a running broker: subscriptions granted or refused (SUBACK
 * 0x80), and publications delivered or dropped. Dropping is observed without timing: the publisher
 * follows its QoS 1 publish with a marker on a plain topic from the same connection; the observer
 * receives the marker after the publication if the broker let it through.
 */
export async function runMatrix(t: Tap, clients: Record<Actor, MqttClient>, prefix: string, label: string, opts: { subackRefusals?: boolean } = {}): Promise<void> {
  for (const row of MATRIX) {
    const topic = row.topic(prefix);
    for (const a of ACTORS) {
      const [granted] = await subscribe(clients[a], topic);
      const allowed = row.sub.includes(a);
      // Mosquitto 2.0 grants ACL-denied subscriptions under 3.1.1 and only withholds the messages.
      if (!allowed && opts.subackRefusals === false) continue;
      t.equal(granted !== 128, allowed, `${label}: ${a} ${allowed ? 'may' : 'may not'} subscribe to ${row.name} (${topic})`);
      if (granted !== 128) await new Promise<void>((r) => clients[a].unsubscribe(topic, () => r()));
    }
    if (!row.sub.includes(row.observer)) continue;
    const observer = clients[row.observer];
    const marker = `ctl/${label}/${process.pid}/${row.name.replace(/\W/g, '_')}`;
    t.equal((await subscribe(observer, [topic, marker]))[0], 1, `${label}: observer ${row.observer} subscribed to ${row.name}`);
    let seen = 0;
    // Retained copies delivered at subscribe time (presence) are not publications under test.
    const count = (tp: string, _p: Buffer, packet: { retain?: boolean }) => {
      if (tp === topic && !packet.retain) seen++;
    };
    observer.on('message', count);
    for (const a of ACTORS) {
      const before = seen;
      const got = nextMessage(observer, (tp, p) => tp === marker && p.toString() === a);
      await publish(clients[a], topic, row.payload(), { retain: row.retain });
      await publish(clients[a], marker, a);
      await got;
      const allowed = row.pub.includes(a);
      t.equal(seen > before, allowed, `${label}: ${a} ${allowed ? 'may' : 'may not'} publish on ${row.name} (${topic})`);
    }
    observer.off('message', count);
    await new Promise<void>((r) => observer.unsubscribe([topic, marker], () => r()));
  }
}
