import type { KeyObject } from 'node:crypto';
import { ProtocolError, Reason } from '../shared/errors.js';
import { manifestId, peekManifest, sha256, verifyManifest, type Manifest } from '../shared/manifest.js';
import { compareVersions } from '../shared/version.js';
import type { AgentStore } from './store.js';
import type { Release, ReleaseRow } from './types.js';

export type { Release };

/** A release being assembled from its retained parts on the broker. */
interface Assembly {
  manifestBytes: Buffer;
  manifest: Manifest;
  id: string;
  parts: Map<number, Buffer>;
  partSize: number | undefined;
  bytes: number;
  /** When its manifest arrived: an assembly still incomplete after the intake timeout is dropped. */
  startedAt: number;
}

/** A release given up on: its manifest came, not all its parts. */
export interface Abandoned {
  hw: string;
  version: string;
  /** Parts held, and the indexes missing (when the part size is known, i.e. part 0 arrived). */
  have: number;
  missing: number[] | undefined;
  bytes: number;
  size: number;
}

export type IntakeResult =
  | { kind: 'need-parts'; hw: string; version: string }
  | { kind: 'complete'; release: Release }
  | { kind: 'known'; release: Release }
  | { kind: 'pending' };

/** A release refused for a reason that is not a wire reason code (docs/protocol.md section 2.1). */
export class ReleaseRefused extends Error {
  constructor(
    readonly reasonName: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * The releases this agent can offer: loaded from its store at start, added as operators publish
 * them. A release is accepted only when its image matches the manifest digest (and, when the agent
 * was given operator keys, when the manifest verifies): an agent that relays garbage wastes airtime,
 * even though the node would refuse it.
 */
export class ReleaseCatalog {
  private readonly byId = new Map<string, Release>();
  private readonly assemblies = new Map<string, Assembly>();
  /** `hw/version` keys an operator withdrew (retained marker, kept in the store): never offered while marked. */
  private readonly withdrawn = new Set<string>();
  /** Stored releases not loaded, with why: a damaged image, or a signer the agent no longer trusts. */
  readonly skipped: string[] = [];

  constructor(
    private readonly store: AgentStore,
    private readonly trust: readonly KeyObject[],
  ) {
    for (const w of store.withdrawals()) this.withdrawn.add(`${w.hw}/${w.version}`);
    for (const row of store.releases()) {
      const name = `${row.hw} ${row.version}`;
      const image = store.loadImage(row);
      if (!image || !sha256(image).equals(row.digest)) {
        this.skipped.push(`${name}: stored image missing or damaged`);
        continue;
      }
      // The trust list may have changed since the release was stored (a rotated operator key):
      // offering a release nodes will refuse as unknownKey only wastes their airtime.
      let manifest: Manifest;
      try {
        manifest = this.trust.length > 0 ? verifyManifest(row.manifest, this.trust) : peekManifest(row.manifest);
      } catch (err) {
        this.skipped.push(`${name}: ${(err as Error).message}`);
        continue;
      }
      this.byId.set(row.id, { row, manifest, image });
    }
  }

  get(id: string | null | undefined): Release | undefined {
    return id ? this.byId.get(id) : undefined;
  }

  all(): Release[] {
    return [...this.byId.values()];
  }

  /** Marks or clears a withdrawal, durably. Returns the held releases of that hw/version. */
  setWithdrawn(hw: string, version: string, on: boolean): Release[] {
    if (on) this.withdrawn.add(`${hw}/${version}`);
    else this.withdrawn.delete(`${hw}/${version}`);
    this.store.setWithdrawal(hw, version, on);
    return this.all().filter((r) => r.row.hw === hw && r.row.version === version);
  }

  isWithdrawn(hw: string, version: string): boolean {
    return this.withdrawn.has(`${hw}/${version}`);
  }

  /**
   * The release to offer a hardware class: the newest one, or none when the newest is withdrawn
   * (an older release is never offered in its place: that would be a downgrade nobody asked for).
   */
  offerableFor(hw: string): Release | undefined {
    const latest = this.latestFor(hw);
    return latest && !this.isWithdrawn(hw, latest.row.version) ? latest : undefined;
  }

  /** The newest release for a hardware class (highest version, then newest signature). */
  latestFor(hw: string): Release | undefined {
    let best: Release | undefined;
    for (const r of this.byId.values()) {
      if (r.row.hw !== hw) continue;
      if (!best) best = r;
      else {
        const c = compareVersions(r.row.version, best.row.version);
        if (c > 0 || (c === 0 && r.manifest.created > best.manifest.created)) best = r;
      }
    }
    return best;
  }

  /** A manifest arrived on a release topic. Throws ProtocolError if it is unusable. */
  onManifest(topicHw: string, topicVersion: string, bytes: Buffer): IntakeResult {
    const manifest = this.trust.length > 0 ? verifyManifest(bytes, this.trust) : peekManifest(bytes);
    if (manifest.hw !== topicHw || manifest.version !== topicVersion) {
      throw new ProtocolError(Reason.badField, `manifest for ${manifest.hw} ${manifest.version} published on the topic of ${topicHw} ${topicVersion}`);
    }
    const id = manifestId(bytes);
    const held = this.byId.get(id);
    if (held) return { kind: 'known', release: held };
    // A version is immutable: another image under a version already held is refused, the held one kept.
    for (const r of this.byId.values()) {
      if (r.row.hw !== manifest.hw || r.row.version !== manifest.version) continue;
      // The same image signed again (a re-publish): the held release stands.
      if (r.row.digest.equals(manifest.digest)) return { kind: 'known', release: r };
      throw new ReleaseRefused('versionConflict', `${manifest.hw} ${manifest.version} is already held with digest ${r.row.digest.toString('hex').slice(0, 12)}; this manifest has ${manifest.digest.toString('hex').slice(0, 12)} (versions are immutable: publish a new version)`);
    }
    const key = `${manifest.hw}/${manifest.version}`;
    const existing = this.assemblies.get(key);
    if (existing && existing.id === id) return { kind: 'pending' };
    this.assemblies.set(key, {
      manifestBytes: bytes, manifest, id, parts: existing?.parts ?? new Map(), partSize: existing?.partSize, bytes: existing?.bytes ?? 0, startedAt: existing?.startedAt ?? Date.now(),
    });
    return this.tryComplete(key) ?? { kind: 'need-parts', hw: manifest.hw, version: manifest.version };
  }

  /** An image part arrived. Parts may come before or after the manifest (retained delivery order). */
  onPart(hw: string, version: string, index: number, data: Buffer): IntakeResult {
    const key = `${hw}/${version}`;
    const a = this.assemblies.get(key);
    if (!a) return { kind: 'pending' };
    if (data.length === 0) return { kind: 'pending' };
    if (index === 0) a.partSize = data.length;
    if (!a.parts.has(index)) {
      a.parts.set(index, data);
      a.bytes += data.length;
    }
    return this.tryComplete(key) ?? { kind: 'pending' };
  }

  /** Releases still being assembled (manifest held, parts missing). */
  get assembling(): number {
    return this.assemblies.size;
  }

  /** Drops assemblies started before `before`: their parts never all came. Their memory is freed. */
  abandonOlderThan(before: number): Abandoned[] {
    const out: Abandoned[] = [];
    for (const [key, a] of this.assemblies) {
      if (a.startedAt > before) continue;
      this.assemblies.delete(key);
      let missing: number[] | undefined;
      if (a.partSize !== undefined) {
        missing = [];
        const count = Math.ceil(a.manifest.size / a.partSize);
        for (let i = 0; i < count; i++) if (!a.parts.has(i)) missing.push(i);
      }
      out.push({ hw: a.manifest.hw, version: a.manifest.version, have: a.parts.size, missing, bytes: a.bytes, size: a.manifest.size });
    }
    return out;
  }

  private tryComplete(key: string): IntakeResult | undefined {
    const a = this.assemblies.get(key)!;
    if (a.partSize === undefined || a.bytes < a.manifest.size) return undefined;
    const count = Math.ceil(a.manifest.size / a.partSize);
    const pieces: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      const p = a.parts.get(i);
      if (!p) return undefined;
      pieces.push(p);
    }
    this.assemblies.delete(key);
    const image = Buffer.concat(pieces);
    if (image.length !== a.manifest.size || !sha256(image).equals(a.manifest.digest)) {
      throw new ProtocolError(Reason.digestMismatch, `release ${a.manifest.hw} ${a.manifest.version}: image parts do not match the manifest digest`);
    }
    const row: ReleaseRow = {
      id: a.id,
      hw: a.manifest.hw,
      version: a.manifest.version,
      securityVersion: a.manifest.securityVersion,
      size: a.manifest.size,
      digest: a.manifest.digest,
      manifest: a.manifestBytes,
      flags: a.manifest.flags,
      receivedAt: Date.now(),
    };
    this.store.saveRelease(row, image);
    const release = { row, manifest: a.manifest, image };
    this.byId.set(row.id, release);
    return { kind: 'complete', release };
  }
}
