import type { KeyObject } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import { peekManifest, sha256, signManifest, type Manifest } from '../shared/manifest.js';
import { decodeReleaseStatus, type ReleaseStatus } from '../shared/release-status.js';
import { topics as makeTopics } from '../shared/topics.js';

export interface PublishOptions {
  brokerUrl: string;
  image: Buffer;
  hw: string;
  version: string;
  key: KeyObject;
  securityVersion?: number;
  flags?: number;
  prefix?: string;
  username?: string;
  password?: string;
  /** Bytes per retained image part; 64 KiB keeps each part under common broker limits. */
  partSize?: number;
  onProgress?: (sent: number, total: number) => void;
  /** Parts are out: now waiting for the agents' verdicts (waitForAgents only). */
  onWaiting?: (timeoutMs: number) => void;
  /** Wait for the agents' verdicts (the CLI does unless --no-wait); otherwise only the broker's read-back is checked. */
  waitForAgents?: boolean;
  /** Refuse before publishing when the broker holds this hw+version with another image (the CLI always does). */
  refuseConflict?: boolean;
  /** How long to wait for a first verdict (default 30 s). */
  waitTimeoutMs?: number;
  /** After the first verdict, how long further agents may take to answer (default 2 s). */
  gatherMs?: number;
}

export interface PublishResult {
  manifest: Manifest;
  manifestBytes: Buffer;
  parts: number;
  /** The verdicts of the agents that answered (empty unless waitForAgents). */
  verdicts: ReleaseStatus[];
}

/** Publishing did not lead to an accepted release; `reason` is the short reason name for scripts. */
export class PublishError extends Error {
  constructor(
    readonly reason: 'notAuthorized' | 'refused' | 'noAgent' | 'versionConflict',
    message: string,
    readonly verdicts: ReleaseStatus[] = [],
  ) {
    super(message);
  }
}

export const DEFAULT_PART_SIZE = 64 * 1024;
export const DEFAULT_WAIT_TIMEOUT_MS = 30_000;
/** How long retained messages may take to arrive after a subscription is granted. */
const RETAINED_SETTLE_MS = 500;
/** How long the broker may take to echo our own manifest back before we call it dropped. */
const READBACK_MS = 5_000;

/**
 * Signs a release and publishes it as retained messages: image parts first, then the manifest, so
 * any agent that sees the manifest can fetch every part. Each part is QoS 1 and awaited in a small
 * pipeline, so the progress shown is what the broker has acknowledged. Then the truth: the manifest
 * must read back (a broker that drops an unauthorised publish still acknowledges it), and with
 * waitForAgents, the agents' retained verdicts (docs/protocol.md section 2.1) decide success.
 */
export async function publishRelease(opts: PublishOptions): Promise<PublishResult> {
  const manifest: Manifest = {
    hw: opts.hw,
    version: opts.version,
    securityVersion: opts.securityVersion ?? 0,
    size: opts.image.length,
    digest: sha256(opts.image),
    created: Math.floor(Date.now() / 1000),
    flags: opts.flags ?? 0,
  };
  const manifestBytes = signManifest(manifest, opts.key);
  const digestHex = manifest.digest.toString('hex');
  const t = makeTopics(opts.prefix);
  const manifestTopic = t.releaseManifest(opts.hw, opts.version);
  const partSize = opts.partSize ?? DEFAULT_PART_SIZE;
  const parts = Math.ceil(opts.image.length / partSize);
  const client = await mqtt.connectAsync(opts.brokerUrl, {
    protocolVersion: 4,
    username: opts.username,
    password: opts.password,
    reconnectPeriod: 0,
    connectTimeout: 10_000,
  });
  const watch = new ReleaseWatch(client, manifestTopic, digestHex);
  try {
    const granted = await client.subscribeAsync([manifestTopic, t.releaseStatusWildcard(opts.hw, opts.version)], { qos: 1 });
    if (granted.some((g) => g.qos === 128)) throw new PublishError('notAuthorized', `not authorized to publish: the broker refused this identity the release topics of ${opts.hw} ${opts.version}`);
    if (opts.refuseConflict) await watch.settle(RETAINED_SETTLE_MS);
    if (opts.refuseConflict && watch.retainedDigest && watch.retainedDigest !== digestHex) {
      throw new PublishError('versionConflict', `versionConflict: ${opts.hw} ${opts.version} is already published with digest ${watch.retainedDigest.slice(0, 12)}, this image has ${digestHex.slice(0, 12)} (versions are immutable: publish a new version)`);
    }
    let acked = 0;
    const inFlight = new Set<Promise<unknown>>();
    for (let i = 0; i < parts; i++) {
      const data = opts.image.subarray(i * partSize, Math.min(opts.image.length, (i + 1) * partSize));
      const p: Promise<unknown> = client.publishAsync(t.releasePart(opts.hw, opts.version, i), data, { qos: 1, retain: true }).then(() => {
        inFlight.delete(p);
        acked += data.length;
        opts.onProgress?.(acked, opts.image.length);
      });
      inFlight.add(p);
      if (inFlight.size >= 8) await Promise.race([...inFlight, watch.closed]);
    }
    await Promise.race([Promise.all(inFlight), watch.closed]);
    watch.expectOwn(manifestBytes);
    await Promise.race([client.publishAsync(manifestTopic, manifestBytes, { qos: 1, retain: true }), watch.closed]);
    await watch.readBack(READBACK_MS);
    if (!opts.waitForAgents) return { manifest, manifestBytes, parts, verdicts: [] };
    const timeoutMs = opts.waitTimeoutMs ?? DEFAULT_WAIT_TIMEOUT_MS;
    opts.onWaiting?.(timeoutMs);
    const verdicts = await watch.verdicts(timeoutMs, opts.gatherMs ?? 2000);
    if (verdicts.length === 0) throw new PublishError('noAgent', `no agent serves hw ${opts.hw}: no agent reported on ${opts.hw} ${opts.version} within ${formatMs(timeoutMs)}`);
    const refused = verdicts.filter((v) => v.state === 'refused');
    if (refused.length > 0) {
      throw new PublishError('refused', refused.map((v) => `refused by ${v.agent}: ${v.reason ?? 'unknown'}${v.detail ? ` (${v.detail})` : ''}`).join('; '), verdicts);
    }
    return { manifest, manifestBytes, parts, verdicts };
  } finally {
    watch.stop();
    await client.endAsync().catch(() => {});
  }
}

function formatMs(ms: number): string {
  return ms < 10_000 ? `${ms} ms` : `${Math.round(ms / 1000)} s`;
}

/** What the publisher hears back on its release's manifest and status topics. */
class ReleaseWatch {
  retainedDigest: string | undefined;
  private own: Buffer | undefined;
  private ownSeen = false;
  private readonly got = new Map<string, ReleaseStatus>();
  private lastMessage = Date.now();
  private wake: (() => void) | undefined;
  private closeReason: string | undefined;
  /** Rejects when the broker closes the connection (e.g. Mosquitto's ACL on some versions). */
  readonly closed: Promise<never>;
  private readonly startedSec = Math.floor(Date.now() / 1000);
  private readonly onMessage: (topic: string, payload: Buffer, packet: { retain?: boolean }) => void;
  private readonly onClose: () => void;

  constructor(
    private readonly client: MqttClient,
    private readonly manifestTopic: string,
    private readonly digestHex: string,
  ) {
    this.onMessage = (topic, payload, packet) => {
      this.lastMessage = Date.now();
      if (topic === this.manifestTopic) {
        if (this.own && payload.equals(this.own)) this.ownSeen = true;
        else if (payload.length > 0 && !this.own) {
          try {
            this.retainedDigest = peekManifest(payload).digest.toString('hex');
          } catch {
            // an undecodable retained manifest is overwritten by ours
          }
        }
      } else {
        try {
          const s = decodeReleaseStatus(payload);
          // A retained verdict from before this publish is history, unless it is about this very image and fresh.
          if (s.digest !== this.digestHex) return;
          if (packet.retain && s.at < this.startedSec) return;
          this.got.set(s.agent, s);
        } catch {
          return;
        }
      }
      this.wake?.();
    };
    this.onClose = () => {
      this.closeReason ??= 'not authorized to publish: the broker closed the connection';
      this.wake?.();
    };
    client.on('message', this.onMessage);
    let fail: (e: Error) => void = () => {};
    this.closed = new Promise<never>((_, reject) => (fail = reject));
    this.closed.catch(() => {});
    client.on('close', () => {
      this.onClose();
      fail(new PublishError('notAuthorized', this.closeReason!));
    });
  }

  expectOwn(bytes: Buffer): void {
    this.own = bytes;
  }

  /** Waits until no message came for `quietMs` (retained messages after a subscription). */
  async settle(quietMs: number): Promise<void> {
    this.lastMessage = Date.now();
    while (Date.now() - this.lastMessage < quietMs) {
      await this.sleep(quietMs - (Date.now() - this.lastMessage));
      if (this.closeReason) throw new PublishError('notAuthorized', this.closeReason);
    }
  }

  async readBack(ms: number): Promise<void> {
    const until = Date.now() + ms;
    while (!this.ownSeen) {
      if (this.closeReason) throw new PublishError('notAuthorized', this.closeReason);
      if (Date.now() >= until) throw new PublishError('notAuthorized', 'not authorized to publish: the broker acknowledged the release but it never read back (it dropped the messages: is this identity an operator?)');
      await this.sleep(until - Date.now());
    }
  }

  /** Verdicts on this image: the first, then those that follow within gatherMs of it. */
  async verdicts(timeoutMs: number, gatherMs: number): Promise<ReleaseStatus[]> {
    const until = Date.now() + timeoutMs;
    while (this.got.size === 0 && Date.now() < until) {
      if (this.closeReason) throw new PublishError('notAuthorized', this.closeReason);
      await this.sleep(until - Date.now());
    }
    const end = this.got.size > 0 ? Date.now() + gatherMs : 0;
    while (Date.now() < end) await this.sleep(end - Date.now());
    return [...this.got.values()].sort((a, b) => a.agent.localeCompare(b.agent));
  }

  stop(): void {
    this.client.off('message', this.onMessage);
    this.wake?.();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, Math.max(0, ms));
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }
}
