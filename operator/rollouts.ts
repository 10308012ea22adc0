import type { KeyObject } from 'node:crypto';
import mqtt from 'mqtt';
import { peekManifest } from '../shared/manifest.js';
import { peekRollout, signPermit, signRollout, type RolloutCommand, type RolloutSpec } from '../shared/rollout.js';
import { topics as makeTopics } from '../shared/topics.js';
import { combine, rolloutView, type RolloutView } from '../agent/rollout-view.js';
import type { AgentRolloutState } from '../agent/rollout-fsm.js';
import type { BrokerAccess } from './releases.js';

/** How long retained messages may take to arrive after the subscription is granted. */
const SETTLE_MS = 500;

/** One rollout as the broker holds it: the document, every agent's state, and the merged view. */
export interface RolloutListing {
  spec: RolloutSpec;
  /** The retained document could not be read (not a signed envelope, bad fields): why. */
  problem?: string;
  view: RolloutView;
  agents: { agent: string; state: string; wave: number; nodes: number; refused?: string }[];
}

async function connect(a: BrokerAccess) {
  return mqtt.connectAsync(a.brokerUrl, { protocolVersion: 4, username: a.username, password: a.password, reconnectPeriod: 0, connectTimeout: 10_000 });
}

/** Subscribes, gathers retained messages until SETTLE_MS passes without one, and returns them. */
async function gather(a: BrokerAccess, filters: string[], what: string): Promise<Map<string, Buffer>> {
  const client = await connect(a);
  const got = new Map<string, Buffer>();
  let last = Date.now();
  client.on('message', (topic, payload) => {
    last = Date.now();
    if (payload.length > 0) got.set(topic, payload);
    else got.delete(topic);
  });
  try {
    const granted = await client.subscribeAsync(filters, { qos: 1 });
    if (granted.some((g) => g.qos === 128)) throw new Error(`not authorized to read ${what} (an operator identity is needed)`);
    last = Date.now();
    while (Date.now() - last < SETTLE_MS) await new Promise((r) => setTimeout(r, SETTLE_MS - (Date.now() - last) + 1));
  } finally {
    await client.endAsync().catch(() => {});
  }
  return got;
}

/** The release's manifest fields as retained on the broker, or undefined when it holds none. */
export async function findRelease(a: BrokerAccess, hw: string, version: string): Promise<{ digest: string; securityVersion: number } | undefined> {
  const t = makeTopics(a.prefix);
  const got = await gather(a, [t.releaseManifest(hw, version)], 'the release topics');
  const bytes = got.get(t.releaseManifest(hw, version));
  if (!bytes) return undefined;
  const m = peekManifest(bytes);
  return { digest: m.digest.toString('hex'), securityVersion: m.securityVersion };
}

/** The nodes the broker knows: hw from their retained statuses, groups from the broker's node info. */
export async function readFleet(a: BrokerAccess): Promise<Map<string, { hw: string; groups: string[] }>> {
  const t = makeTopics(a.prefix);
  const got = await gather(a, [t.statusWildcard, t.infoWildcard], 'the node status topics');
  const out = new Map<string, { hw: string; groups: string[] }>();
  const info = new Map<string, string[]>();
  for (const [topic, payload] of got) {
    const id = t.deviceOf(topic);
    if (!id) continue;
    try {
      const o = JSON.parse(payload.toString('utf8')) as { hw?: unknown; groups?: unknown };
      if (topic.endsWith('/info') && Array.isArray(o.groups)) info.set(id, o.groups.filter((g): g is string => typeof g === 'string'));
      else if (topic.endsWith('/status') && typeof o.hw === 'string') out.set(id, { hw: o.hw, groups: [] });
    } catch {
      // a damaged retained message is skipped
    }
  }
  for (const [id, f] of out) f.groups = info.get(id) ?? [];
  return out;
}

/** Every rollout on the broker (or one), merged with the agents' states; newest first. */
export async function readRollouts(a: BrokerAccess, only?: string): Promise<RolloutListing[]> {
  const t = makeTopics(a.prefix);
  const id = only ?? '+';
  const got = await gather(a, [`${t.prefix}/rollout/${id}`, `${t.prefix}/rollout/${id}/state/+`], 'the rollout topics');
  const specs = new Map<string, RolloutSpec>();
  const problems = new Map<string, string>();
  const states = new Map<string, Map<string, AgentRolloutState & { refused?: string }>>();
  const base = t.prefix.split('/').length;
  for (const [topic, payload] of got) {
    const levels = topic.split('/').slice(base + 1);
    try {
      if (levels.length === 1) {
        try {
          specs.set(levels[0], peekRollout(payload));
        } catch (err) {
          problems.set(levels[0], (err as Error).message);
          specs.set(levels[0], placeholder(levels[0]));
        }
      } else if (levels.length === 3 && levels[1] === 'state') {
        const o = JSON.parse(payload.toString('utf8')) as AgentRolloutState & { refused?: string };
        const m = states.get(levels[0]) ?? new Map();
        m.set(levels[2], o);
        states.set(levels[0], m);
      }
    } catch {
      // a damaged retained message is skipped, not fatal to the listing
    }
  }
  const out: RolloutListing[] = [];
  for (const [rid, spec] of specs) {
    const per = states.get(rid) ?? new Map<string, AgentRolloutState & { refused?: string }>();
    const live = [...per.values()].filter((s) => !s.refused && s.status);
    const merged: AgentRolloutState = live.length > 0 ? combine(live) : { status: spec.command === 'abort' ? { kind: 'aborted', reason: 'aborted by the operator' } : spec.command === 'pause' ? { kind: 'paused' } : { kind: 'running' }, wave: 0, nodes: {} };
    const agents = [...per].sort(([x], [y]) => x.localeCompare(y)).map(([agent, s]) => ({
      agent, state: s.refused ? 'refused' : s.status.kind, wave: s.wave ?? 0, nodes: Object.keys(s.nodes ?? {}).length, ...(s.refused ? { refused: s.refused } : {}),
    }));
    out.push({ spec, view: rolloutView(spec, merged), agents, ...(problems.has(rid) ? { problem: problems.get(rid) } : {}) });
  }
  return out.sort((x, y) => y.spec.created - x.spec.created || x.spec.id.localeCompare(y.spec.id));
}

/**
 * Publishes a signed rollout document retained and checks it reads back (a broker that drops an
 * unauthorised publish still acknowledges it at QoS 1).
 */
export async function publishRollout(a: BrokerAccess, spec: RolloutSpec, key: KeyObject): Promise<void> {
  const t = makeTopics(a.prefix);
  const topic = t.rollout(spec.id);
  const doc = signRollout(spec, key);
  const client = await connect(a);
  try {
    await client.publishAsync(topic, doc, { qos: 1, retain: true });
    const seen = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 5000);
      client.on('message', (tp, payload) => {
        if (tp !== topic) return;
        clearTimeout(timer);
        resolve(payload.equals(doc));
      });
      client.subscribeAsync(topic, { qos: 1 }).then((g) => {
        if (g.some((x) => x.qos === 128)) resolve(false);
      }, () => resolve(false));
    });
    if (!seen) throw new Error(`not authorized to publish: rollout ${spec.id} never read back from the broker (an operator identity is needed)`);
  } finally {
    await client.endAsync().catch(() => {});
  }
}

/** The revert permit for a rollout with --auto-revert: nodes running `version` may take an older release. */
export function revertPermitFor(spec: Pick<RolloutSpec, 'id' | 'hw' | 'version'>, key: KeyObject): string {
  return signPermit({ v: 1, kind: 'revert', rollout: spec.id, hw: spec.hw, from: spec.version }, key).toString('base64');
}

/** A new command for an existing rollout: the same document with the command and a higher seq. */
export function withCommand(spec: RolloutSpec, command: RolloutCommand): RolloutSpec {
  return { ...spec, command, seq: spec.seq + 1 };
}

/** Stands in for a document that does not read, so its agents' refusals can still be listed. */
function placeholder(id: string): RolloutSpec {
  return {
    v: 1, id, hw: '?', version: '?', digest: '', groups: [], devices: [], canary: { n: 0 }, waves: [100], maxFailures: { n: 0 }, window: null, minBattery: null,
    autoRevert: false, auto: false, plan: null, revertPermit: null, command: 'abort', seq: 0, created: 0,
  };
}
