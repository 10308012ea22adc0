import fs from 'node:fs';
import path from 'node:path';
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import type { KeyObject } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import { sha256 } from '../shared/manifest.js';
import { Ctl, CTL_SLOTS, Exit, RING_BYTES, ringWrite, type WorkerConfig, type WorkerEvent } from './micropython-link.js';

/**
 * A MicroPython node on the host: the client's own source (node/micropython/ferry_node) running in
 * real MicroPython (WebAssembly) in a worker thread, one worker per boot. This side owns what
 * outlives a boot: the flash (a directory), the bootloader's slot choice, and the node's MQTT
 * connection (MQTT.js), which it carries for the worker through shared memory. A reboot is a new
 * worker on the same flash; a power cut terminates the worker wherever it is.
 */
export interface MicroPythonNodeOptions {
  brokerUrl: string;
  deviceId: string;
  hw: string;
  /** Version of the factory image. */
  version: string;
  /** Operator public keys provisioned on the node. */
  trust: KeyObject[];
  /** The board's flash; created and provisioned when empty. */
  flashDir: string;
  /** Factory image written into slot 0 at provisioning. */
  image: Buffer;
  /** Size of each OTA slot (multiple of 4 KiB). Default 256 KiB. */
  slotSize?: number;
  prefix?: string;
  username?: string;
  password?: string;
  /** Chunk size the node asks for (its max-message follows). Default 4096. */
  chunk?: number;
  window?: number;
  saveEvery?: number;
  selfTestFail?: string[];
  selfTestHang?: string[];
  crashAtStart?: string[];
  /** Delay between a reset and the next boot, ms. Default 20. */
  rebootMs?: number;
}

export type BootSelection = { seq: number; slot: number; state: string; aborted?: number };

const here = path.dirname(fileURLToPath(import.meta.url));
/** node/micropython in the checkout (this file runs from dist/device). */
export const MICROPYTHON_SOURCE = path.resolve(here, '../../node/micropython');

/** Operator key as the node's provisioning file holds it: the raw 32-byte Ed25519 key in hex. */
export function rawPublicKeyHex(k: KeyObject): string {
  return k.export({ format: 'der', type: 'spki' }).subarray(-32).toString('hex');
}

export class MicroPythonNode extends EventEmitter {
  readonly id: string;
  private readonly opts: MicroPythonNodeOptions;
  private worker: Worker | undefined;
  private client: MqttClient | undefined;
  private ctl = new Int32Array(new SharedArrayBuffer(4 * CTL_SLOTS));
  private ring = new Uint8Array(new SharedArrayBuffer(RING_BYTES));
  private pending: { topic: string; payload: Buffer }[] = [];
  private pump: NodeJS.Timeout | undefined;
  private running = false;
  private nextCut: number | undefined;
  private pendingCut = 0;
  /** Highest gc.mem_alloc() the client saw, over all boots. */
  peakHeap = 0;
  boots = 0;
  readonly lines: string[] = [];

  constructor(opts: MicroPythonNodeOptions) {
    super();
    this.opts = opts;
    this.id = opts.deviceId;
  }

  get flashDir(): string {
    return this.opts.flashDir;
  }

  /** Writes the factory flash: slot 0 = image, slot 1 erased, the provisioning file. */
  provision(): void {
    const o = this.opts;
    if (fs.existsSync(path.join(o.flashDir, 'ota_0.bin'))) return;
    const slotSize = o.slotSize ?? 256 * 1024;
    if (slotSize % 4096 || o.image.length > slotSize) throw new RangeError(`slot size ${slotSize} must be a multiple of 4096 holding the ${o.image.length}-byte image`);
    fs.mkdirSync(path.join(o.flashDir, 'vfs'), { recursive: true });
    const slot0 = Buffer.alloc(slotSize, 0xff);
    o.image.copy(slot0);
    fs.writeFileSync(path.join(o.flashDir, 'ota_0.bin'), slot0);
    fs.writeFileSync(path.join(o.flashDir, 'ota_1.bin'), Buffer.alloc(slotSize, 0xff));
    const cfg = {
      id: o.deviceId, hw: o.hw, version: o.version, keys: o.trust.map(rawPublicKeyHex), digest: sha256(o.image).toString('hex'), size: o.image.length,
      prefix: o.prefix ?? 'ferry', chunk: o.chunk ?? 4096, window: o.window ?? 8, save_every: o.saveEvery ?? 8, selftest_delay_ms: 20,
    };
    fs.writeFileSync(path.join(o.flashDir, 'vfs', 'ferry.json'), JSON.stringify(cfg, null, 1));
  }

  async start(): Promise<void> {
    if (this.running) return;
    this.provision();
    this.running = true;
    this.boot();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.halt(true);
  }

  /** Power loss now: the worker dies wherever it is, the connection drops without a goodbye. */
  async powerCut(): Promise<void> {
    if (!this.running) return;
    await this.halt(true);
    this.emit('powerCut');
    this.boot();
  }

  /** The next boot cuts power at its n-th flash write (tearing that write). */
  cutAtFlashOp(n: number): void {
    this.nextCut = n;
  }

  /** The running boot cuts power at its n-th flash operation from now (tearing a write). */
  cutAfterFlashOps(n: number): void {
    if (this.worker) Atomics.store(this.ctl, Ctl.cutIn, n);
    else this.pendingCut = n; // between boots: counts from the next boot's start
  }

  /** The image a slot holds (its first `size` bytes). */
  slotImage(slot: number, size: number): Buffer {
    return fs.readFileSync(path.join(this.opts.flashDir, `ota_${slot}.bin`)).subarray(0, size);
  }

  /** The bootloader: ESP-IDF's otadata rules over /flash/otadata.json (new → pending; pending again → aborted, boot the other slot). */
  private selectSlot(): number {
    const file = path.join(this.opts.flashDir, 'otadata.json');
    let e: BootSelection;
    try {
      e = JSON.parse(fs.readFileSync(file, 'utf8')) as BootSelection;
    } catch {
      return 0;
    }
    if (e.state === 'new') e = { ...e, state: 'pending' };
    else if (e.state === 'pending') {
      this.emit('stage', `bootloader: slot ${e.slot} was never confirmed: rolling back to slot ${1 - e.slot}`);
      e = { seq: e.seq + 1, slot: 1 - e.slot, state: 'valid', aborted: e.slot };
    } else return e.slot;
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(e));
    fs.renameSync(`${file}.tmp`, file);
    return e.slot;
  }

  private boot(): void {
    const slot = this.selectSlot();
    this.boots++;
    this.ctl = new Int32Array(new SharedArrayBuffer(4 * CTL_SLOTS));
    this.ring = new Uint8Array(new SharedArrayBuffer(RING_BYTES));
    this.pending = [];
    Atomics.store(this.ctl, Ctl.cutIn, this.pendingCut);
    this.pendingCut = 0;
    const o = this.opts;
    const cfg: WorkerConfig = {
      flashDir: o.flashDir,
      libDirs: [path.join(MICROPYTHON_SOURCE, 'ferry_node'), path.join(MICROPYTHON_SOURCE, 'host')],
      slot, ctl: this.ctl.buffer as SharedArrayBuffer, ring: this.ring.buffer as SharedArrayBuffer,
      cutAtFlashOp: this.nextCut, selfTestFail: o.selfTestFail ?? [], selfTestHang: o.selfTestHang ?? [], crashAtStart: o.crashAtStart ?? [],
    };
    this.nextCut = undefined;
    const worker = new Worker(new URL('./micropython-worker.js', import.meta.url), { workerData: cfg });
    this.worker = worker;
    worker.on('message', (e: WorkerEvent) => {
      if (this.worker === worker) this.onEvent(e);
    });
    worker.on('error', (err) => this.emit('stage', `worker error: ${err.message}`));
    worker.on('exit', (code) => {
      if (this.worker !== worker) return;
      this.worker = undefined;
      void this.afterExit(code);
    });
  }

  private async afterExit(code: number): Promise<void> {
    const why = code === Exit.reset ? 'reset' : code === Exit.powerCut ? 'power cut' : code === Exit.watchdog ? 'watchdog reset' : `exit ${code}`;
    this.emit('stage', `down: ${why}`);
    if (code === Exit.powerCut) this.emit('powerCut');
    this.dropLink(code !== Exit.reset);
    if (!this.running) return;
    if (code === Exit.crashed) {
      this.emit('crashed');
      return;
    }
    await new Promise((r) => setTimeout(r, this.opts.rebootMs ?? 20));
    if (this.running && !this.worker) this.boot();
  }

  private async halt(abrupt: boolean): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    if (w) await w.terminate();
    this.dropLink(abrupt);
  }

  private dropLink(abrupt: boolean): void {
    const c = this.client;
    this.client = undefined;
    if (this.pump) clearTimeout(this.pump);
    this.pump = undefined;
    if (!c) return;
    c.removeAllListeners('message');
    c.on('error', () => {});
    if (abrupt) c.stream?.destroy();
    c.end(abrupt);
  }

  private reply(ok: boolean): void {
    Atomics.store(this.ctl, Ctl.reply, ok ? 1 : 2);
    Atomics.notify(this.ctl, Ctl.reply);
  }

  private onEvent(e: WorkerEvent): void {
    switch (e.t) {
      case 'log':
        this.lines.push(e.line);
        if (this.lines.length > 500) this.lines.shift();
        if (e.line.startsWith('ferry: ')) this.emit('stage', e.line.slice(7));
        else this.emit('log', e.line);
        return;
      case 'peak':
        if (e.bytes > this.peakHeap) this.peakHeap = e.bytes;
        this.emit('peak', e.bytes);
        return;
      case 'flashOps':
        this.emit('flashOps', e.count);
        return;
      case 'connect':
        return this.connect(e.clientId);
      case 'subscribe': {
        const c = this.client;
        if (!c) return this.reply(false);
        c.subscribe(e.topic, { qos: e.qos as 0 | 1 }, (err) => this.reply(!err));
        return;
      }
      case 'publish':
        this.client?.publish(e.topic, Buffer.from(e.payload), { qos: e.qos as 0 | 1 });
        return;
      case 'disconnect':
        this.dropLink(false);
        return;
      case 'reset': {
        // A clean reset: what the node published before it goes out first.
        const c = this.client;
        if (!c) return this.reply(true);
        c.end(false, {}, () => this.reply(true));
        this.client = undefined;
        return;
      }
    }
  }

  private connect(clientId: string): void {
    this.dropLink(true);
    const ctl = this.ctl;
    const ring = this.ring;
    const c = mqtt.connect(this.opts.brokerUrl, {
      protocolVersion: 4, clean: true, clientId, username: this.opts.username, password: this.opts.password,
      reconnectPeriod: 0, connectTimeout: 5000, keepalive: 30, queueQoSZero: false,
    });
    this.client = c;
    let answered = false;
    c.on('connect', () => {
      Atomics.store(ctl, Ctl.link, 1);
      answered = true;
      this.reply(true);
    });
    c.on('message', (topic, payload) => {
      this.pending.push({ topic, payload });
      this.flushPending(ctl, ring);
    });
    const down = () => {
      Atomics.store(ctl, Ctl.link, 0);
      Atomics.add(ctl, Ctl.rxSeq, 1);
      Atomics.notify(ctl, Ctl.rxSeq);
      if (!answered) {
        answered = true;
        this.reply(false);
      }
    };
    c.on('close', down);
    c.on('error', down);
  }

  /** Messages wait here while the ring is full (the node is busy, as TCP would make them wait). */
  private flushPending(ctl: Int32Array, ring: Uint8Array): void {
    if (ctl !== this.ctl) return;
    while (this.pending.length > 0) {
      const m = this.pending[0];
      if (!ringWrite(ctl, ring, m.topic, m.payload)) {
        this.pump ??= setTimeout(() => {
          this.pump = undefined;
          this.flushPending(ctl, ring);
        }, 2);
        return;
      }
      this.pending.shift();
    }
  }
}
