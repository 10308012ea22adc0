import { Capability, Encoding } from '../shared/messages.js';
import { releaseName, type LogFn } from '../shared/log.js';
import { sha256 } from '../shared/manifest.js';
import { archForNode, deltaSparseFor, detectImage, readPatchHeader, type ArchName } from '../shared/delta/index.js';
import { Transform } from '../shared/delta/format.js';
import type { ReleaseCatalog } from './catalog.js';
import type { PatchCache } from './patches.js';
import type { NodeRow, Payload, Release } from './types.js';

export interface PayloadOptions {
  catalog: ReleaseCatalog;
  patches: PatchCache;
  delta: boolean;
  deltaMargin: number;
  /** A delta of this release failed on this node before. */
  deltaRefused: (node: string, release: string) => boolean;
  event: (node: string, kind: string, detail: string) => void;
  log: LogFn;
  /** Progress of a patch being made, for the node's status detail ('' when done). */
  progress: (node: string, detail: string) => void;
  closed: () => boolean;
}

/**
 * Which payload a node gets: a delta when it can apply one, the agent holds the image it runs
 * (matched by the digest in its Hello), and the patch is smaller than the image by the margin; the
 * full image otherwise. The choice and its reason go to the event log. Patches are made once per
 * (base, target) in the patch cache's worker thread, so this may take seconds without holding up others.
 */
export class PayloadChooser {
  /** Each release image's instruction set, detected once (detection may scan the whole image). */
  private readonly archs = new WeakMap<Buffer, ArchName>();

  constructor(private readonly o: PayloadOptions) {}

  private imageArch(release: Release): ArchName {
    let arch = this.archs.get(release.image);
    if (arch === undefined) this.archs.set(release.image, (arch = detectImage(release.image).arch));
    return arch;
  }

  full(release: Release): Payload {
    return { bytes: release.image, encoding: Encoding.full, digest: release.row.digest };
  }

  async choose(row: NodeRow, release: Release): Promise<Payload> {
    const o = this.o;
    const full = this.full(release);
    const why = this.deltaRefusal(row, release);
    if (why !== undefined) {
      if (why && !o.closed()) o.event(row.id, 'payload', `full image: ${why}`);
      return full;
    }
    const base = o.catalog.all().find((r) => r.row.digest.equals(row.runningDigest!));
    if (!base) {
      o.event(row.id, 'payload', `full image: the agent does not hold the image the node runs (${row.runningVersion})`);
      return full;
    }
    // A node that decodes the release's instruction set gets a patch that predicts moved references.
    const arch = archForNode(row.caps, this.imageArch(release));
    const sparse = deltaSparseFor(row.caps);
    const pair = `${release.row.hw} ${base.row.version} -> ${release.row.version}`;
    const predicted = arch === 'none' ? '' : `, ${arch} prediction`;
    let patch = o.patches.cached(base.row.digest, release.row.digest, arch, sparse);
    if (!patch) {
      o.log('info', `node ${row.id}: making delta patch ${pair} in the background (${o.patches.pending} other job(s) pending)`);
      o.progress(row.id, `making delta patch ${pair}`);
      let logged = '';
      try {
        patch = await o.patches.get({ image: base.image, digest: base.row.digest }, { image: release.image, digest: release.row.digest }, (phase, done, total) => {
          const pct = total ? Math.floor((done / total) * 100) : 0;
          const step = `${phase} ${Math.floor(pct / 25) * 25} %`; // the log gets quarters, the status every report
          if (step !== logged) o.log('info', `delta patch ${pair}: ${(logged = step)}`);
          o.progress(row.id, `making delta patch ${pair}: ${phase} ${pct} %`);
        }, arch, sparse);
      } catch (err) {
        if (o.closed()) return full;
        o.log('warn', `node ${row.id}: no delta ${pair}: ${(err as Error).message}; sending the full image`, { device: row.id, release: releaseName(release.row.hw, release.row.version) });
        o.event(row.id, 'payload', `full image: no delta ${pair}: ${(err as Error).message}`);
        return full;
      } finally {
        o.progress(row.id, '');
      }
    }
    if (o.closed()) return full;
    if (patch.length > release.image.length * (1 - o.deltaMargin)) {
      const msg = `full image: delta ${pair} is ${patch.length} B, not ${Math.round(o.deltaMargin * 100)} % smaller than the ${release.image.length} B image`;
      o.log('info', `node ${row.id}: ${msg}`);
      o.event(row.id, 'payload', msg);
      return full;
    }
    // The creator uses the sparse diff stream only where it makes the patch smaller: say whether it did.
    const sparseUsed = (readPatchHeader(patch).transforms & Transform.sparseDiff) !== 0;
    o.event(row.id, 'payload', `delta ${pair}: ${patch.length} B for a ${release.image.length} B image${predicted}${sparseUsed ? ', sparse diff' : ''}`);
    return { bytes: patch, encoding: Encoding.delta, digest: sha256(patch), baseDigest: base.row.digest };
  }

  /** The session payload after a restart, rebuilt from what the row says it was (undefined: no longer the same). */
  async restore(row: NodeRow, release: Release): Promise<Payload | undefined> {
    if (row.payloadEncoding !== Encoding.delta) return this.full(release);
    const p = await this.choose(row, release);
    return p.encoding === Encoding.delta ? p : undefined;
  }

  /** Why this node gets no delta for this release ('' = nothing worth logging), or undefined if it may. */
  private deltaRefusal(row: NodeRow, release: Release): string | undefined {
    if (!this.o.delta) return 'delta patches are turned off';
    if (!(row.caps & Capability.delta)) return 'the node does not apply delta patches';
    if (!row.runningDigest) return '';
    if (this.o.deltaRefused(row.id, release.row.id)) return 'a delta of this release failed on this node before';
    return undefined;
  }
}
