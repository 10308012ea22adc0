import { ProtocolError } from '../shared/errors.js';
import { releaseName, type LogFn } from '../shared/log.js';
import { peekManifest } from '../shared/manifest.js';
import type { Topics } from '../shared/topics.js';
import { ReleaseRefused, type ReleaseCatalog } from './catalog.js';
import type { AgentStore } from './store.js';
import type { Release } from './types.js';

export interface IntakeOptions {
  catalog: ReleaseCatalog;
  store: AgentStore;
  topics: Topics;
  /** A release whose parts have not all come this long after its manifest is dropped. */
  timeoutMs: number;
  subscribeParts: (filter: string) => void;
  unsubscribeParts: (filter: string) => void;
  log: LogFn;
  onReady: (release: Release) => void;
  /** The agent's verdict on a release, for its retained release-status topic. */
  onVerdict: (v: Verdict) => void;
}

export type Verdict =
  | { state: 'accepted'; hw: string; version: string; digest: string }
  | { state: 'refused'; hw: string; version: string; digest: string; reason: string; detail: string };

/** The reason name of an intake failure: a wire reason (unknownKey, digestMismatch, ...) or a release one (versionConflict). */
function reasonOf(err: unknown): string {
  if (err instanceof ProtocolError || err instanceof ReleaseRefused) return err.reasonName;
  return 'invalid';
}

/**
 * Release intake from the retained release topics: a manifest, then its image parts (in any order).
 * Refused releases are logged and recorded; a release whose parts do not all arrive in time is logged
 * with what is missing, its memory freed and its part subscription dropped (a later publish starts over).
 */
export class ReleaseIntake {
  private sweeper: NodeJS.Timeout | undefined;
  /** Image digest (hex) of the manifest last seen per `hw/version`, for verdicts on its parts. */
  private readonly digests = new Map<string, string>();

  constructor(private readonly o: IntakeOptions) {}

  start(): void {
    const every = Math.max(50, Math.min(30_000, Math.floor(this.o.timeoutMs / 4)));
    this.sweeper = setInterval(() => this.expire(Date.now()), every);
    this.sweeper.unref();
  }

  stop(): void {
    if (this.sweeper) clearInterval(this.sweeper);
  }

  /** `rest`: the topic levels after `<prefix>/r/`. */
  onMessage(rest: string[], payload: Buffer): void {
    const [hw, version, kind, index] = rest;
    const { catalog } = this.o;
    if (kind === 'manifest') {
      if (payload.length === 0) return; // retained release cleared
      let digest = '';
      try {
        digest = peekManifest(payload).digest.toString('hex');
      } catch {
        // not even decodable: the verdict names no digest
      }
      this.digests.set(`${hw}/${version}`, digest);
      try {
        const r = catalog.onManifest(hw, version, payload);
        if (r.kind === 'need-parts') this.o.subscribeParts(this.o.topics.partWildcard(hw, version));
        else if (r.kind === 'complete') this.ready(r.release);
        else if (r.kind === 'known') {
          this.digests.delete(`${hw}/${version}`);
          this.o.onVerdict({ state: 'accepted', hw, version, digest: r.release.row.digest.toString('hex') });
        }
      } catch (err) {
        this.refused(hw, version, reasonOf(err), (err as Error).message);
      }
    } else if (kind === 'part' && /^\d{1,5}$/.test(index ?? '')) {
      try {
        const r = catalog.onPart(hw, version, Number(index), payload);
        if (r.kind === 'complete') {
          this.o.unsubscribeParts(this.o.topics.partWildcard(hw, version));
          this.ready(r.release);
        }
      } catch (err) {
        this.o.unsubscribeParts(this.o.topics.partWildcard(hw, version));
        this.refused(hw, version, reasonOf(err), (err as Error).message);
      }
    }
  }

  /** Gives up on assemblies older than the timeout. */
  expire(now: number): void {
    for (const a of this.o.catalog.abandonOlderThan(now - this.o.timeoutMs)) {
      this.o.unsubscribeParts(this.o.topics.partWildcard(a.hw, a.version));
      const missing = a.missing === undefined
        ? 'part 0 (so the part count is unknown)'
        : `${a.missing.length} part(s): ${a.missing.slice(0, 20).join(', ')}${a.missing.length > 20 ? ', …' : ''}`;
      const after = this.o.timeoutMs < 10_000 ? `${this.o.timeoutMs} ms` : `${Math.round(this.o.timeoutMs / 1000)} s`;
      const why = `incomplete after ${after}: ${a.have} part(s), ${a.bytes} of ${a.size} bytes; missing ${missing}; dropped (publish it again)`;
      this.o.log('warn', `release ${a.hw} ${a.version} ${why}`, { release: releaseName(a.hw, a.version), reason: 'incomplete', verdict: 'refused' });
      this.o.store.event(null, 'release-incomplete', `${a.hw} ${a.version}: ${why}`);
      this.o.onVerdict({ state: 'refused', hw: a.hw, version: a.version, digest: this.takeDigest(a.hw, a.version), reason: 'incomplete', detail: why });
    }
  }

  private refused(hw: string, version: string, reason: string, detail: string): void {
    this.o.log('warn', `release ${hw} ${version} refused: ${reason}: ${detail}`, { release: releaseName(hw, version), reason, verdict: 'refused' });
    this.o.store.event(null, 'release-refused', `${hw} ${version}: ${reason}: ${detail}`);
    this.o.onVerdict({ state: 'refused', hw, version, digest: this.takeDigest(hw, version), reason, detail });
  }

  /** The digest a verdict is about; the entry is dropped with the assembly it belonged to. */
  private takeDigest(hw: string, version: string): string {
    const key = `${hw}/${version}`;
    const d = this.digests.get(key) ?? '';
    this.digests.delete(key);
    return d;
  }

  private ready(release: Release): void {
    this.o.log('info', `release ${release.row.hw} ${release.row.version} ready (${release.row.size} bytes, security version ${release.row.securityVersion})`, {
      release: releaseName(release.row.hw, release.row.version), verdict: 'accepted', digest: release.row.digest.toString('hex').slice(0, 8),
    });
    this.o.store.event(null, 'release', `${release.row.hw} ${release.row.version} ${release.row.id}`);
    this.digests.delete(`${release.row.hw}/${release.row.version}`);
    this.o.onVerdict({ state: 'accepted', hw: release.row.hw, version: release.row.version, digest: release.row.digest.toString('hex') });
    this.o.onReady(release);
  }
}
