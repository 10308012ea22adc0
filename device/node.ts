import { EventEmitter } from 'node:events';
import type { KeyObject } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import { ALL_ARCH_CAPABILITIES } from '../shared/delta/choose.js';
import { ProtocolError, Reason, reasonName } from '../shared/errors.js';
import { verifyManifest, ManifestFlag, type Manifest } from '../shared/manifest.js';
import {
  ackInterval, Capability, CHUNK_CBOR_OVERHEAD, decodeDown, encodeMessage, Encoding, ImageState, LIMITS, MsgType, PROTOCOL_VERSION, Stage,
  type Activate, type Cancel, type Chunk, type DownMessage, type ImageStateCode, type LastOutcome, type Offer, type Report, type StageCode, type UpMessage,
} from '../shared/messages.js';
import { topics, type Topics } from '../shared/topics.js';
import { compareVersions } from '../shared/version.js';
import { verifyPermit } from '../shared/rollout.js';
import { BootFailure } from './bootloader.js';
import { Flash, PowerCut } from './flash.js';
import { DEFAULT_SLOT_SIZE, makeLayout, type Layout } from './layout.js';
import { DeviceSystem, RebootRequest, type PendingReport, type ResetReason } from './system.js';
import type { BootProfileName } from './profiles.js';
import type { RecoveryCause } from './recovery.js';
import { chunkCount, payloadOffset, type Download, type TransferMeta } from './transfer.js';
import { applyStoredDelta } from './delta-install.js';

/**
 * A simulated ESP32-like node speaking ferry protocol v1 (docs/protocol.md §5) over MQTT 3.1.1.
 * The firmware side (flash, bootloader, NVS, self-test verdicts) is device/system.ts; this class is
 * the network client and the node's update algorithm.
 *
 * Every flash operation may throw PowerCut (the injector in device/flash.ts): message handling
 * catches it and the node loses power, i.e. drops its connection and RAM and boots from flash.
 */
export interface SimNodeOptions {
  brokerUrl: string;
  deviceId: string;
  hw: string;
  /** Version of the factory image (used only when the flash is blank). */
  version: string;
  /** Operator public keys the node trusts for manifests. */
  trust: KeyObject[];
  prefix?: string;
  username?: string;
  password?: string;
  /** Largest whole MQTT PUBLISH the node can receive (its buffer). Default 4096. */
  maxMessage?: number;
  /** Receive window in chunks. Default 16. */
  window?: number;
  /** New images fail their self-test: reported failure (true) or a hang ending in a watchdog reset. */
  failSelfTest?: boolean | 'watchdog';
  /** Bootloader with rollback (pending-verify trial boots). Default true. Older spelling of `boot`: false = esp-idf-norollback. */
  rollback?: boolean;
  /** Boot profile: esp-idf (default), esp-idf-norollback, mcuboot-swap, mcuboot-overwrite (device/profiles.ts). */
  boot?: BootProfileName;
  /** Trial boots of a new image before it counts as failed (default: the profile's; MCUboot swap: always 1). */
  trialBoots?: number;
  /** Failed starts in a row (watchdog before the app is up) before recovery mode. Default 3. */
  safeModeAfter?: number;
  /** Fault injection: the application of these versions crashes at start-up (a watchdog reset before it is up). */
  crashAtBoot?: string[];
  /** Apply delta patches (capability 1). Default true. */
  delta?: boolean;
  /** Reuse this flash (the same node after a restart). Default: a fresh, blank flash. */
  flash?: Flash;
  /** Factory image for a blank flash. Default: deterministic bytes from (hw, version). */
  initialImage?: Buffer;
  /** Security version of the factory image. */
  securityVersion?: number;
  /** Answer Activate with busy `times` times, asking to retry after `retryAfter` seconds. */
  deferActivation?: { times: number; retryAfter: number };
  /** Size of each OTA slot in bytes (multiple of 64 KiB). Default 2 MiB; storage is sparse. */
  slotSize?: number;
  /** Save the received bitmap after this many new chunks. Default 16. */
  saveEvery?: number;
  /** Simulated self-test duration in ms. Default 20. */
  selfTestMs?: number;
  /** Simulated reboot duration in ms. Default 20. */
  rebootMs?: number;
  /** MQTT reconnect period in ms. Default 500..1000, jittered per node. */
  reconnectPeriod?: number;
  /** How long to wait for CONNACK before trying again, ms (default 30 s). */
  connectTimeoutMs?: number;
  /** Battery charge in percent, sent in every Hello (key 15); absent: mains powered. */
  battery?: number;
  /** Diagnostic log lines (default: none). */
  log?: (level: 'info' | 'warn' | 'error', msg: string) => void;
}

export interface NodeOutcome {
  stage: StageCode;
  reason: number;
  version?: string;
  session: number;
}

/** Most bits an Ack carries after its base: keeps acks small for a node's MQTT output buffer. */
const MAX_ACK_BITS = 8192;

/** Longest wait between failed connection attempts (with the default, backed-off reconnect period). */
const RECONNECT_MAX_MS = 15_000;

export class SimNode extends EventEmitter {
  readonly flash: Flash;
  readonly layout: Layout;
  readonly id: string;
  private readonly opts: SimNodeOptions;
  private readonly topics: Topics;
  private readonly maxMessage: number;
  private readonly window: number;
  private readonly rollback: boolean;
  private readonly delta: boolean;
  private sys: DeviceSystem;
  private client: MqttClient | undefined;
  /** Bumped on every boot and stop: callbacks of an older life do nothing. */
  private life = 0;
  private running = false;
  private timers = new Set<NodeJS.Timeout>();
  private outbox: UpMessage[] = [];
  private helloSent = false;
  private selfTestStarted = false;
  private newSinceAck = 0;
  private deferrals = 0;
  private lastRejectAt = new Map<number, number>();
  private bootPromise: Promise<void> | undefined;
  private resetReason: ResetReason = 'powerOn';
  private bricked: Error | undefined;
  /** Versions whose application crashes at start-up (fault injection). */
  private crashAtBoot: Set<string>;
  /** The download whose delta patch is being applied (the apply spans event-loop turns). */
  private applying: Download | undefined;

  constructor(opts: SimNodeOptions) {
    super();
    this.opts = opts;
    this.id = opts.deviceId;
    this.topics = topics(opts.prefix);
    this.maxMessage = opts.maxMessage ?? 4096;
    this.window = opts.window ?? 16;
    this.delta = opts.delta ?? true;
    this.crashAtBoot = new Set(opts.crashAtBoot ?? []);
    if (this.maxMessage < LIMITS.maxMessage.min || this.maxMessage > LIMITS.maxMessage.max) throw new RangeError(`maxMessage ${this.maxMessage} must be ${LIMITS.maxMessage.min}..${LIMITS.maxMessage.max}`);
    if (!Number.isInteger(this.window) || this.window < 1 || this.window > LIMITS.maxWindow) throw new RangeError(`window ${this.window} must be 1..${LIMITS.maxWindow}`);
    this.layout = makeLayout(opts.slotSize ?? DEFAULT_SLOT_SIZE);
    this.flash = opts.flash ?? new Flash(this.layout.flashSize);
    this.sys = new DeviceSystem(this.flash, this.layout, {
      hw: opts.hw, version: opts.version, initialImage: opts.initialImage, securityVersion: opts.securityVersion, saveEvery: opts.saveEvery,
      profile: opts.boot, rollback: opts.rollback, trialBoots: opts.trialBoots, safeModeAfter: opts.safeModeAfter,
    });
    this.rollback = this.sys.profile.rollback;
  }

  // ---- public surface ---------------------------------------------------------------------------

  get runningVersion(): string {
    return this.sys.running.version;
  }

  get runningDigest(): Buffer {
    return this.sys.running.digest;
  }

  get imageState(): ImageStateCode {
    return this.sys.imageState;
  }

  get bootProfile(): BootProfileName {
    return this.sys.profile.name;
  }

  /** How the last update ended (or was refused), as kept in NVS and sent in every Hello. */
  get lastOutcome(): LastOutcome | undefined {
    return this.sys.lastOutcome;
  }

  /** Why the node runs its recovery (safe) mode app, or undefined. */
  get recovery(): RecoveryCause | undefined {
    return this.sys.recovery;
  }

  /** The running image awaits its self-test verdict. */
  get inTrial(): boolean {
    return this.sys.trial;
  }

  /** Largest image this node can install. */
  get imageCapacity(): number {
    return this.sys.imageCapacity;
  }

  /** Fault injection at run time: from the next boot on, the application of these versions crashes at start-up. */
  setCrashAtBoot(versions: string[]): void {
    this.crashAtBoot = new Set(versions);
  }

  get slot(): number {
    return this.sys.slot;
  }

  get securityVersion(): number {
    return this.sys.counter.value;
  }

  get bootCount(): number {
    return this.sys.bootCount;
  }

  get connected(): boolean {
    return this.client?.connected ?? false;
  }

  /** The download in progress: chunks received and total, or undefined. */
  get transfer(): { session: number; received: number; total: number } | undefined {
    const d = this.sys.download;
    return d && { session: d.meta.session, received: d.bitmap.count, total: d.total };
  }

  get capabilities(): number {
    // Recovery mode takes full images only: the running image is not a base to patch from.
    const delta = this.delta && !this.sys.recovery;
    // The simulated node runs shared/delta's applier, which predicts every instruction set.
    return (delta ? Capability.delta | Capability.deltaSparse | ALL_ARCH_CAPABILITIES : 0) | (this.rollback ? Capability.rollback : 0) | Capability.antiRollback | (this.opts.deferActivation ? Capability.deferActivation : 0);
  }

  /** Boots from flash and connects. Resolves once the first Hello is out (or after 5 s of trying). */
  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.resetReason = 'powerOn';
    await this.bootAndConnect();
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.life++;
    this.clearTimers();
    await this.disconnect(false);
    this.flash.close();
  }

  /** Power loss: the connection drops without a goodbye, RAM is lost, the node boots from flash. */
  async powerCut(): Promise<void> {
    if (!this.running) return;
    await this.loseState('powerOn');
    await this.bootAndConnect();
  }

  // ---- life cycle -------------------------------------------------------------------------------

  private async loseState(reason: ResetReason): Promise<void> {
    this.life++;
    this.clearTimers();
    this.resetReason = reason;
    this.outbox = [];
    this.helloSent = false;
    this.selfTestStarted = false;
    this.newSinceAck = 0;
    this.deferrals = reason === 'powerOn' ? 0 : this.deferrals;
    await this.disconnect(true);
  }

  private bootAndConnect(): Promise<void> {
    const life = this.life;
    this.bootPromise = (async () => {
      if (!this.powerOn()) return;
      if (life !== this.life) return;
      if (!this.sys.recovery && this.crashAtBoot.has(this.sys.running.version)) {
        // Fault injection: the application dies during start-up; the watchdog resets the chip.
        this.stage('crash', `${this.sys.running.version} crashed during start-up (failed starts in a row: ${this.sys.crashStreak + 1})`);
        this.rebootSoon('watchdog');
        return;
      }
      // The application is up. A trial image is only healthy once its self-test passed.
      if (!this.sys.trial) this.sys.markHealthy();
      // A node without a rollback bootloader has no pending-verify state to report: it settles its
      // trial boot before going online so its first Hello is the truth.
      if (this.sys.trial && !this.rollback) {
        await this.delay(this.opts.selfTestMs ?? 20);
        if (life !== this.life) return;
        this.runSelfTest();
        if (life !== this.life) return;
      }
      // With rollback, reaching the broker is part of the self-test: it starts after the trial
      // boot's Hello (pending-verify) is out, so the agent always sees the trial boot.
      await this.connect(life);
    })();
    return this.bootPromise;
  }

  /** Runs the boot model until the node is up; a power cut during boot just boots again. */
  private powerOn(): boolean {
    for (let attempt = 0; attempt < 100; attempt++) {
      try {
        this.sys.powerOn(this.resetReason);
        const d = this.sys.running;
        this.stage('booted', `slot ${this.sys.slot} ${d.version} state ${imageStateName(this.sys.imageState)} boot #${this.sys.bootCount}${this.sys.trial ? ' (trial)' : ''}${this.sys.recovery ? ` (recovery mode: ${this.sys.recovery})` : ''}`);
        for (const c of this.sys.cleaned) this.stage('cleanup', c);
        for (const p of this.sys.pending) this.queueReport(p);
        return true;
      } catch (err) {
        if (err instanceof PowerCut) {
          this.stage('powerCut', err.message);
          this.resetReason = 'powerOn';
          continue;
        }
        if (err instanceof RebootRequest) {
          this.resetReason = err.reset;
          continue;
        }
        if (err instanceof BootFailure) {
          this.bricked = err;
          this.stage('bricked', err.message);
          this.emit('bricked', err);
          return false;
        }
        throw err;
      }
    }
    throw new Error(`${this.id}: boot loop`);
  }

  get isBricked(): boolean {
    return this.bricked !== undefined;
  }

  private runSelfTest(): void {
    if (!this.sys.trial) return;
    const fail = this.opts.failSelfTest;
    this.stage('selfTest', fail ? (fail === 'watchdog' ? 'hangs' : 'fails') : 'passes');
    this.guard(() => {
      if (fail === 'watchdog') {
        // The self-test hangs; the watchdog resets the chip without anyone marking anything.
        this.rebootSoon('watchdog');
        return;
      }
      if (fail) {
        this.sys.selfTestFailed(Reason.selfTestFailed);
        this.rebootSoon('software');
        return;
      }
      const confirmed = this.sys.selfTestPassed();
      // The image state changed: a fresh Hello tells the agent (and its status) the truth at once.
      if (this.client?.connected && this.helloSent) this.sendHello();
      if (confirmed) this.queueReport(confirmed);
    });
  }

  private rebootSoon(reason: ResetReason): void {
    const life = this.life;
    this.stage('rebooting', reason);
    void (async () => {
      await this.loseState(reason);
      await this.delay(this.opts.rebootMs ?? 20);
      if (!this.running || this.life !== life + 1) return;
      await this.bootAndConnect();
    })().catch((err) => this.log('error', `reboot failed: ${(err as Error).message}`));
  }

  // ---- MQTT -------------------------------------------------------------------------------------

  private connect(life: number): Promise<void> {
    return new Promise((resolve) => {
      const base = this.opts.reconnectPeriod ?? 500 + Math.floor(Math.random() * 500);
      const reconnectPeriod = base;
      const client = mqtt.connect(this.opts.brokerUrl, {
        protocolVersion: 4,
        clean: true,
        clientId: this.id,
        username: this.opts.username,
        password: this.opts.password,
        reconnectPeriod,
        // A broker that answers "server unavailable" (its login back-off or budget) is retried like
        // a network error; MQTT.js would otherwise stop for good after a refused CONNACK.
        reconnectOnConnackError: true,
        // MQTT.js's default. A shorter one (it was 5 s) abandons attempts the broker is still
        // authenticating when many nodes connect at once, and each retry costs the broker another
        // password hash: a thousand nodes then never all got in.
        connectTimeout: this.opts.connectTimeoutMs ?? 30_000,
        keepalive: 30,
        // Nothing queued while offline: every connect starts with Hello, which resynchronises.
        queueQoSZero: false,
      });
      this.client = client;
      const settle = setTimeout(resolve, 5000);
      client.on('connect', () => {
        if (life !== this.life) return;
        client.subscribe(this.topics.down(this.id), { qos: 1 }, (err) => {
          if (life !== this.life) return;
          if (err) {
            this.log('warn', `subscribe failed: ${err.message}`);
            return;
          }
          this.stage('connected', this.opts.brokerUrl);
          this.sendHello();
          this.flushOutbox();
          // A download that was complete when power went (before or during its verification) is
          // verified now: the agent waits for `verified` and has nothing left to send that would
          // make the node look at it again.
          const d = this.sys.download;
          if (d && d.complete && !d.verified && this.applying !== d) this.guard(() => this.finishDownload(d));
          if (this.sys.trial && this.rollback && !this.selfTestStarted) {
            this.selfTestStarted = true;
            this.schedule(this.opts.selfTestMs ?? 20, () => this.runSelfTest());
          }
          clearTimeout(settle);
          resolve();
        });
      });
      client.on('message', (topic, payload) => {
        if (life !== this.life) return;
        this.onMessage(topic, payload);
      });
      // Failed attempts back off (doubling, with jitter, up to RECONNECT_MAX_MS) unless the caller
      // fixed the period: a thousand nodes reconnecting to a gateway at once (its restart) would
      // otherwise keep retrying every second while the broker is still checking the first
      // attempts' passwords, and never all get in. A session that was up starts again at the base.
      let upThisAttempt = false;
      let failures = 0;
      client.on('connect', () => {
        upThisAttempt = true;
        failures = 0;
        client.options.reconnectPeriod = base;
      });
      client.on('close', () => {
        if (life === this.life) this.helloSent = false;
        // MQTT.js keeps unacknowledged QoS 1 publishes and re-sends them right after the next
        // CONNACK, before the SUBACK and the Hello: stale Acks there made the agent send chunks
        // into a node not yet subscribed. The Hello resynchronises (its bitmap and last outcome),
        // and queued outcomes wait in the outbox, so nothing from the dead connection is kept.
        for (const id of Object.keys(client.outgoing)) client.removeOutgoingMessage(Number(id));
        if (!upThisAttempt && this.opts.reconnectPeriod === undefined) {
          failures++;
          const ceiling = Math.min(RECONNECT_MAX_MS, base * 2 ** failures);
          client.options.reconnectPeriod = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
        }
        upThisAttempt = false;
      });
      client.on('error', (err) => {
        if (life === this.life) this.log('warn', `mqtt: ${err.message}`);
      });
    });
  }

  private async disconnect(abrupt: boolean): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (!client) return;
    client.removeAllListeners('message');
    client.on('error', () => {});
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, 1000);
      // force: close the socket now (a power cut sends no DISCONNECT, so the broker fires the will).
      client.end(abrupt, {}, () => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  private publish(m: UpMessage, onSent?: () => void): void {
    const client = this.client;
    if (!client || !client.connected) {
      onSent?.();
      return;
    }
    // Fire-and-forget QoS 1: never awaited inside the message handler.
    client.publish(this.topics.up(this.id), encodeMessage(m), { qos: 1 }, (err) => {
      // A publish removed when its link closed (above) is not a failure worth a line: the Hello resynchronises.
      if (err && err.message !== 'Message removed') this.log('warn', `publish failed: ${err.message}`);
      onSent?.();
    });
  }

  private sendHello(): void {
    const s = this.sys;
    const d = s.download;
    this.publish({
      type: MsgType.hello,
      proto: PROTOCOL_VERSION,
      deviceId: this.id,
      hw: this.opts.hw,
      version: s.running.version,
      digest: s.running.digest,
      securityVersion: s.counter.value,
      slot: s.slot,
      imageState: s.imageState,
      maxMessage: this.maxMessage,
      caps: this.capabilities,
      window: this.window,
      transfer: d && { session: d.meta.session, digest: d.meta.payloadDigest, chunkSize: d.meta.chunkSize, bitmap: d.bitmap.toBytes() },
      lastOutcome: s.lastOutcome,
      battery: this.opts.battery,
      bootCount: s.bootCount,
    });
    this.helloSent = true;
    this.emit('hello');
  }

  /** Reports that must reach the agent even if the node is offline right now (outcomes). */
  private queueReport(p: PendingReport): void {
    const r: Report = { type: MsgType.report, session: p.session, stage: p.stage, reason: p.reason, version: p.version };
    this.emit('outcome', { stage: p.stage, reason: p.reason, version: p.version, session: p.session } satisfies NodeOutcome);
    this.stage(p.stage === Stage.confirmed ? 'confirmed' : p.stage === Stage.failed ? 'failed' : 'rolledBack', `${p.version}${p.reason ? ` (${reasonName(p.reason)})` : ''}`);
    if (this.client?.connected && this.helloSent) this.publish(r);
    else if (this.outbox.length < 8) this.outbox.push(r);
  }

  private flushOutbox(): void {
    const queued = this.outbox;
    this.outbox = [];
    for (const m of queued) this.publish(m);
  }

  private report(session: number, stage: StageCode, reason: number, extra: { version?: string; detail?: string; retryAfter?: number } = {}, onSent?: () => void): void {
    this.publish({ type: MsgType.report, session, stage, reason, ...extra, detail: extra.detail?.slice(0, LIMITS.maxDetail) }, onSent);
    if (stage === Stage.rejected || stage === Stage.confirmed || stage === Stage.rolledBack || stage === Stage.failed) {
      this.emit('outcome', { stage, reason, version: extra.version, session } satisfies NodeOutcome);
    }
  }

  /** A refusal, at most once a second per reason so garbage cannot make the node flood its uplink. */
  private reject(session: number, reason: number, detail: string, version?: string): void {
    const now = Date.now();
    this.stage('rejected', `${reasonName(reason)}: ${detail}`);
    if ((this.lastRejectAt.get(reason) ?? 0) > now - 1000) return;
    this.lastRejectAt.set(reason, now);
    // The refusal of an update survives a reboot as the last outcome (every Hello carries it).
    if (version !== undefined && session !== 0) this.sys.recordRejection(version, reason);
    this.report(session, Stage.rejected, reason, { detail, version });
  }

  // ---- protocol ---------------------------------------------------------------------------------

  private onMessage(topic: string, payload: Buffer): void {
    if (topic !== this.topics.down(this.id)) return;
    const packetSize = 1 + 4 + 2 + Buffer.byteLength(topic) + payload.length;
    if (packetSize > this.maxMessage + 2) {
      // A real node's receive buffer would have truncated this; the agent sized it wrong.
      this.reject(0, Reason.oversize, `message of ${packetSize} bytes exceeds max-message ${this.maxMessage}`);
      return;
    }
    let m: DownMessage;
    try {
      m = decodeDown(payload);
    } catch (err) {
      const reason = err instanceof ProtocolError ? err.reason : Reason.malformed;
      this.reject(0, reason, (err as Error).message);
      return;
    }
    this.guard(() => {
      switch (m.type) {
        case MsgType.offer: return this.onOffer(m);
        case MsgType.chunk: return this.onChunk(m);
        case MsgType.activate: return this.onActivate(m);
        case MsgType.cancel: return this.onCancel(m);
        case MsgType.error: return this.log('warn', `agent error ${reasonName(m.reason)}: ${m.detail ?? ''}`);
        // The agent missed our Hello (it started or reconnected after us): say it again.
        case MsgType.query: return this.sendHello();
      }
    });
  }

  /** Runs firmware code; a power cut inside it takes the node down and back up. */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      if (err instanceof PowerCut) {
        this.stage('powerCut', err.message);
        const life = this.life;
        void (async () => {
          await this.loseState('powerOn');
          await this.delay(this.opts.rebootMs ?? 20);
          if (!this.running || this.life !== life + 1) return;
          await this.bootAndConnect();
        })().catch((e) => this.log('error', `power-on failed: ${(e as Error).message}`));
        return;
      }
      this.log('error', `internal error: ${(err as Error).stack ?? err}`);
      this.reject(0, Reason.flashError, (err as Error).message);
    }
  }

  private onOffer(o: Offer): void {
    if (this.sys.trial || this.sys.activation) {
      // The inactive slot still holds the rollback image until this boot is confirmed; the agent
      // resends its offer, by which time the verdict is in.
      this.log('info', `offer ${o.session} ignored during the trial boot`);
      return;
    }
    let m: Manifest;
    try {
      m = verifyManifest(o.manifest, this.opts.trust);
    } catch (err) {
      const reason = err instanceof ProtocolError ? err.reason : Reason.badSignature;
      this.reject(o.session, reason, (err as Error).message);
      return;
    }
    const refusal = this.checkOffer(o, m);
    if (refusal) {
      if (refusal.reason === Reason.none) {
        this.report(o.session, Stage.confirmed, Reason.none, { version: m.version, detail: 'already running' });
        return;
      }
      this.reject(o.session, refusal.reason, refusal.detail, m.version);
      return;
    }
    const meta: TransferMeta = {
      session: o.session, encoding: o.encoding, payloadSize: o.payloadSize, chunkSize: o.chunkSize, payloadDigest: o.payloadDigest, baseDigest: o.baseDigest, manifest: o.manifest,
    };
    const saved = this.sys.download;
    if (saved && saved.meta.payloadDigest.equals(o.payloadDigest) && saved.meta.chunkSize === o.chunkSize && saved.meta.payloadSize === o.payloadSize && saved.meta.encoding === o.encoding) {
      if (saved.meta.session !== o.session || !saved.meta.manifest.equals(o.manifest)) saved.adoptSession(meta);
      this.stage('resumed', `session ${o.session}: ${saved.bitmap.count}/${saved.total} chunks already stored`);
      this.sendAck(saved, o.offerId);
      if (saved.complete) this.finishDownload(saved);
      return;
    }
    const d = this.sys.beginDownload(meta);
    this.deferrals = 0;
    this.stage('downloading', `session ${o.session}: ${m.version}, ${o.payloadSize} bytes in ${d.total} chunks of ${o.chunkSize}`);
    this.sendAck(d, o.offerId);
  }

  /** An older release is taken only with an operator-signed revert permit for this hw and running version (section 3.4 step 4). */
  private revertPermitted(o: Offer, running: string): boolean {
    if (!o.permit) return false;
    try {
      const p = verifyPermit(o.permit, this.opts.trust);
      return p.hw === this.opts.hw && p.from === running;
    } catch (err) {
      this.log('warn', `revert permit refused: ${(err as Error).message}`);
      return false;
    }
  }

  /** Section 3's checks after the signature, in order. Reason none = already running it. */
  private checkOffer(o: Offer, m: Manifest): { reason: number; detail: string } | undefined {
    const running = this.sys.running;
    if (m.hw !== this.opts.hw) return { reason: Reason.wrongHardware, detail: `release is for ${m.hw}, this node is ${this.opts.hw}` };
    const cmp = compareVersions(m.version, running.version);
    if (cmp === 0 && m.digest.equals(running.digest)) return { reason: Reason.none, detail: 'already running' };
    if (cmp <= 0 && !this.revertPermitted(o, running.version)) return { reason: Reason.downgrade, detail: `${m.version} is not newer than ${running.version}` };
    if (m.securityVersion < this.sys.counter.value) return { reason: Reason.securityDowngrade, detail: `security version ${m.securityVersion} < ${this.sys.counter.value}` };
    // Storage checks before anything is erased: the image must fit what the slot can hold.
    if (m.size > this.sys.imageCapacity) return { reason: Reason.noSpace, detail: `${m.size}-byte image does not fit the ${this.sys.imageCapacity}-byte image area of a slot` };
    if (!this.rollback && !(m.flags & ManifestFlag.allowNoRollback)) return { reason: Reason.noRollbackSupport, detail: 'bootloader cannot roll back and the release does not allow that' };
    if (o.encoding === Encoding.delta) {
      // A refused delta (deltaFailed, deltaBaseMismatch, noSpace) makes the agent fall back to the full image.
      if (!this.delta) return { reason: Reason.deltaFailed, detail: 'this node does not apply delta patches' };
      if (this.sys.recovery) return { reason: Reason.deltaFailed, detail: 'recovery mode takes full images only' };
      if (!o.baseDigest || !o.baseDigest.equals(running.digest)) return { reason: Reason.deltaBaseMismatch, detail: 'the patch is not for the running image' };
      const slotSize = this.sys.imageCapacity;
      if (o.payloadSize >= slotSize || m.size > payloadOffset(Encoding.delta, slotSize, o.payloadSize)) {
        return { reason: Reason.noSpace, detail: `patch (${o.payloadSize} B) and image (${m.size} B) do not fit the slot together` };
      }
    } else if (o.encoding !== Encoding.full) {
      return { reason: Reason.badField, detail: `unknown encoding ${o.encoding}` };
    } else if (o.payloadSize !== m.size || !o.payloadDigest.equals(m.digest)) {
      return { reason: Reason.badField, detail: 'full-image offer must carry the manifest size and digest' };
    }
    if (o.chunkSize < 1 || chunkCount(o.payloadSize, o.chunkSize) > LIMITS.maxChunks) return { reason: Reason.badField, detail: `chunk size ${o.chunkSize} is not usable for ${o.payloadSize} bytes` };
    const room = this.maxMessage - 5 - 2 - Buffer.byteLength(this.topics.down(this.id)) - CHUNK_CBOR_OVERHEAD;
    if (o.chunkSize > room) return { reason: Reason.oversize, detail: `chunk size ${o.chunkSize} exceeds what max-message ${this.maxMessage} allows` };
    return undefined;
  }

  private onChunk(c: Chunk): void {
    const d = this.sys.download;
    if (!d || c.session !== d.meta.session) {
      this.reject(c.session, Reason.unknownSession, `no transfer with session ${c.session}`);
      return;
    }
    if (c.index >= d.total || c.data.length !== d.expectedLength(c.index)) {
      this.log('warn', `chunk ${c.index} of ${c.data.length} bytes does not fit the transfer (${d.total} chunks of ${d.meta.chunkSize})`);
      return;
    }
    const result = d.store(c.index, c.data);
    if (result === 'duplicate') {
      this.sendAck(d);
      return;
    }
    this.emit('chunk', d.bitmap.count, d.total);
    this.newSinceAck++;
    if (d.complete) {
      this.sendAck(d);
      this.finishDownload(d);
    } else if (this.newSinceAck >= ackInterval(this.window)) {
      this.sendAck(d);
    }
  }

  /**
   * Ack: base = first missing chunk, then the stored chunks after it. Routine acks describe up to
   * max(1024, 16 windows) past base (more than can be in flight between retransmissions), bounding
   * each ack's work for 65,536-chunk payloads; the ack answering an Offer describes all it holds and
   * echoes the Offer's offer-id, so that the agent can tell it from Acks that crossed the Offer.
   */
  private sendAck(d: Download, answers?: number): void {
    this.newSinceAck = 0;
    const base = d.bitmap.firstMissing();
    const span = answers !== undefined ? MAX_ACK_BITS : Math.min(MAX_ACK_BITS, Math.max(1024, 16 * this.window));
    const bitmap = base < d.total ? d.bitmap.slice(base, span) : undefined;
    this.publish({ type: MsgType.ack, session: d.meta.session, base, bitmap, answers });
  }

  /** Every chunk is stored: read the slot back, hash it, compare with the offer and the manifest. */
  private finishDownload(d: Download): void {
    const manifest = verifyManifest(d.meta.manifest, this.opts.trust);
    const digest = d.digestOfStored();
    if (d.meta.encoding !== Encoding.delta) {
      this.finishImage(d, manifest, digest);
      return;
    }
    if (!digest.equals(d.meta.payloadDigest)) {
      this.sys.discardDownload();
      this.reject(d.meta.session, Reason.digestMismatch, 'stored patch does not match the offered digest', manifest.version);
      return;
    }
    if (this.applying === d) return; // already applying it (a resent Offer or Activate)
    this.applying = d;
    this.stage('patching', `${d.meta.payloadSize}-byte patch → ${manifest.size}-byte image`);
    // In slices with the event loop running in between, so MQTT keepalives go on during the apply.
    const life = this.life;
    const alive = () => life === this.life && this.sys.download === d;
    applyStoredDelta(
      {
        flash: this.flash, running: this.layout.slots[this.sys.slot], runningSize: this.sys.running.size, target: this.sys.imageArea(d.slot),
        patchOffset: d.offset, patchSize: d.meta.payloadSize, baseDigest: d.meta.baseDigest ?? this.sys.running.digest, expectedSize: manifest.size,
      },
      { alive },
    ).then(
      (r) => {
        if (this.applying === d) this.applying = undefined;
        if (!alive()) return;
        this.guard(() => this.finishImage(d, manifest, r.digest));
      },
      (err: Error) => {
        if (this.applying === d) this.applying = undefined;
        if (!alive()) return;
        this.guard(() => {
          if (err instanceof PowerCut) throw err;
          this.sys.discardDownload();
          this.reject(d.meta.session, err instanceof ProtocolError ? err.reason : Reason.deltaFailed, err.message, manifest.version);
        });
      },
    );
  }

  /** The inactive slot holds the new image (downloaded or patched): check it and record it. */
  private finishImage(d: Download, manifest: Manifest, digest: Buffer): void {
    if ((d.meta.encoding === Encoding.full && !digest.equals(d.meta.payloadDigest)) || !digest.equals(manifest.digest)) {
      this.sys.discardDownload();
      this.reject(d.meta.session, Reason.digestMismatch, `stored image hashes to ${digest.toString('hex').slice(0, 16)}…, expected ${manifest.digest.toString('hex').slice(0, 16)}…`, manifest.version);
      return;
    }
    this.sys.installDescriptor({ size: manifest.size, securityVersion: manifest.securityVersion, digest, version: manifest.version, manifest: d.meta.manifest });
    d.verified = true;
    this.stage('verified', `${manifest.version} (${manifest.size} bytes)`);
    this.report(d.meta.session, Stage.verified, Reason.none, { version: manifest.version });
  }

  private onActivate(a: Activate): void {
    const act = this.sys.activation;
    if (act && act.session === a.session && !this.sys.trial) {
      // A resent Activate that arrives between the activation and the reboot: it is under way.
      this.report(a.session, Stage.rebooting, Reason.none, { version: act.version, detail: 'already activated, rebooting' });
      return;
    }
    const d = this.sys.download;
    if (!d || d.meta.session !== a.session) {
      // A repeated Activate after the reboot: answer with what is known, or refuse an unknown session.
      const out = this.sys.lastOutcome;
      if (out && !d && this.sys.running.version === out.version && out.stage === Stage.confirmed) {
        this.report(a.session, Stage.confirmed, Reason.none, { version: out.version });
      } else if (!this.sys.trial) {
        this.reject(a.session, Reason.unknownSession, `no verified transfer with session ${a.session}`);
      }
      return;
    }
    if (!d.complete) {
      this.reject(a.session, Reason.badField, `activate before the transfer is complete (${d.bitmap.count}/${d.total})`);
      return;
    }
    if (!d.verified) {
      this.finishDownload(d);
      // Refused, or a delta still being applied (it reports verified when done; the agent asks again).
      if (!d.verified) return;
    }
    const manifest = verifyManifest(d.meta.manifest, this.opts.trust);
    const defer = this.opts.deferActivation;
    if (defer && this.deferrals < defer.times) {
      this.deferrals++;
      this.stage('busy', `activation deferred ${this.deferrals}/${defer.times}, retry after ${defer.retryAfter}s`);
      this.report(a.session, Stage.busy, Reason.busy, { version: manifest.version, retryAfter: defer.retryAfter });
      return;
    }
    this.sys.activate(a.session, manifest.version);
    this.deferrals = 0;
    const life = this.life;
    this.report(a.session, Stage.rebooting, Reason.none, { version: manifest.version }, () => {
      // Reboot once the report is out (or could not be sent), like esp_restart() after a flush.
      if (life === this.life) this.rebootSoon('software');
    });
  }

  /**
   * The agent abandons the session (a newer release replaced it): stop, forget the transfer and any
   * deferred activation, and say so. A session already marked for its trial boot is past cancelling:
   * the boot's outcome tells the agent what happened.
   */
  private onCancel(c: Cancel): void {
    const d = this.sys.download;
    if (!d || d.meta.session !== c.session) return;
    if (this.sys.activation?.session === c.session) return;
    if (this.applying === d) this.applying = undefined;
    this.sys.discardDownload();
    this.deferrals = 0;
    this.stage('cancelled', `session ${c.session}: ${reasonName(c.reason)}`);
    this.report(c.session, Stage.rejected, Reason.cancelled, { detail: 'cancelled by the agent' });
  }

  // ---- helpers ----------------------------------------------------------------------------------

  private stage(name: string, detail: string): void {
    this.emit('stage', name, detail);
  }

  private log(level: 'info' | 'warn' | 'error', msg: string): void {
    this.opts.log?.(level, `${this.id}: ${msg}`);
  }

  private schedule(ms: number, fn: () => void): void {
    const life = this.life;
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (life === this.life) fn();
    }, ms);
    this.timers.add(t);
  }

  private delay(ms: number): Promise<void> {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  private clearTimers(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }
}

/** Human name of an image state code, for logs and the CLI. */
export function imageStateName(s: number): string {
  return (Object.entries(ImageState).find(([, v]) => v === s)?.[0]) ?? `state#${s}`;
}
