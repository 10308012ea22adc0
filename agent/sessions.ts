import { randomInt } from 'node:crypto';
import { Reason, reasonName } from '../shared/errors.js';
import { releaseName } from '../shared/log.js';
import { Encoding, LIMITS, MsgType, negotiateChunkSize } from '../shared/messages.js';
import type { PayloadChooser } from './payload.js';
import { Transfer } from './transfer.js';
import type { Release } from './types.js';
import type { Input } from './update-fsm.js';
import type { NodeRuntime, UpdatesDeps } from './updates.js';

/** Delta refusals that say nothing against the patch itself (the node, the link or the slot was the problem). */
const NOT_THE_PATCH: ReadonlySet<number> = new Set([Reason.deltaBaseMismatch, Reason.digestMismatch, Reason.noSpace]);

/**
 * The sessions side of the runtime: making a payload ready, opening a session's transfer, offering
 * it, pumping chunks under the window and the resend budget, and rebuilding a session after a restart.
 */
export class Sessions {
  constructor(
    private readonly d: UpdatesDeps,
    private readonly payloads: PayloadChooser,
    private readonly feed: (n: NodeRuntime, input: Input) => void,
    private readonly isClosed: () => boolean,
  ) {}

  /** Makes the payload ready (a delta may take a while, in a worker), then offers it. */
  prepare(n: NodeRuntime): void {
    const row = n.row;
    const gen = ++n.prepGen;
    const release = this.d.catalog.get(n.update.target?.id);
    const fail = (reason: number, detail: string) => queueMicrotask(() => gen === n.prepGen && this.feed(n, { kind: 'finish', outcome: 'rejected', reason, detail }));
    if (!release) return fail(Reason.badField, 'the release is no longer held by the agent');
    let chunkSize: number;
    try {
      chunkSize = negotiateChunkSize(row.maxMessage, this.d.topics.down(row.id), this.d.cfg.maxChunk);
    } catch (err) {
      return fail(Reason.badField, (err as Error).message);
    }
    this.payloads.choose(row, release).then(
      (payload) => {
        if (gen !== n.prepGen || this.isClosed()) return;
        const count = Math.ceil(payload.bytes.length / chunkSize);
        if (count > LIMITS.maxChunks) return fail(Reason.oversize, `payload needs ${count} chunks of ${chunkSize} B, limit ${LIMITS.maxChunks}`);
        n.prepared = { payload, chunkSize };
        this.feed(n, { kind: 'prepared', release: release.row.id, session: randomInt(1, 0xffffffff) });
      },
      (err: Error) => this.d.log('error', `node ${row.id}: preparing payload: ${err.message}`),
    );
  }

  open(n: NodeRuntime, session: number, now: number): void {
    const p = n.prepared;
    const release = this.d.catalog.get(n.update.target?.id);
    if (!p || !release) return;
    n.prepared = undefined;
    const row = n.row;
    n.transfer = new Transfer(session, p.payload, p.chunkSize, row.window, n.rtt, this.d.cfg.resendBudget, now);
    Object.assign(row, { payloadEncoding: p.payload.encoding, chunkSize: p.chunkSize, chunkCount: n.transfer.count, attempts: row.attempts + 1, bitmap: n.transfer.window.acked.toBytes() });
    const what = p.payload.encoding === Encoding.delta ? `delta patch (${p.payload.bytes.length} B for a ${release.row.size} B image)` : `${release.row.size} B`;
    this.d.log('info', `node ${row.id}: offering ${release.row.version}: ${what} in ${n.transfer.count} chunks of ${p.chunkSize} B`, {
      device: row.id, release: releaseName(release.row.hw, release.row.version), session, payload: p.payload.encoding === Encoding.delta ? 'delta' : 'full',
    });
  }

  sendOffer(n: NodeRuntime): void {
    const t = n.transfer;
    const release = this.d.catalog.get(n.update.target?.id);
    if (!t || !release || n.update.session === null) return;
    this.d.links.sendDown(n.row.id, {
      type: MsgType.offer, session: n.update.session, offerId: n.update.offerId, manifest: release.row.manifest, encoding: t.payload.encoding,
      payloadSize: t.payload.bytes.length, payloadDigest: t.payload.digest, chunkSize: t.chunkSize, baseDigest: t.payload.baseDigest,
      permit: n.permit,
    });
  }

  /** Fills the window with chunks (within the resend budget) and arms the retransmission timer. */
  pump(n: NodeRuntime): void {
    const t = n.transfer;
    const p = n.update.phase;
    if (!t || this.isClosed() || !this.d.links.connected) return;
    if ((p.kind !== 'downloading' && p.kind !== 'verifying') || p.answer) return;
    const clock = this.d.clock;
    const sentBefore = t.bytesSent;
    const resentBefore = t.window.retransmits;
    const counters = this.d.counters;
    const due = t.pump(clock.now(), (c) => {
      counters.chunksSent++;
      this.d.links.sendDown(n.row.id, c, 0);
    });
    counters.bytesRelayed += t.bytesSent - sentBefore;
    counters.retransmits += t.window.retransmits - resentBefore;
    n.row.bytesSent += t.bytesSent - sentBefore;
    n.row.retransmits = t.window.retransmits;
    if (n.windowTimer) clock.clearTimeout(n.windowTimer);
    n.windowTimer = due === undefined ? undefined : clock.setTimeout(() => this.onWindowTimeout(n), due + 1);
  }

  private onWindowTimeout(n: NodeRuntime): void {
    n.windowTimer = undefined;
    const t = n.transfer;
    if (!t) return;
    const due = t.window.nextDeadline(this.d.clock.now());
    if (due === undefined || due > 0) {
      this.pump(n); // the resend budget refilled: not an expiry
      return;
    }
    n.silentExpiries++;
    this.d.onWindowTimeout({ id: n.row.id, rto: n.rtt.dataRto, expiries: n.silentExpiries });
    if (n.silentExpiries > this.d.cfg.maxControlRetries) {
      // The node has gone quiet: stop spending airtime until it says hello again (or the deadline).
      this.d.store.event(n.row.id, 'silent', 'transfer paused until the node returns');
      t.window.resync(t.window.acked.toBytes());
      return;
    }
    this.pump(n);
  }

  /**
   * The node could not use the patch (base not what it runs, patch damaged in transit or on disk, no
   * room for patch and image together): the full image follows, once. A patch that arrived intact on
   * a node running its base and still failed is suspect itself, so the cache forgets it.
   */
  fallBackToFull(n: NodeRuntime, reason: number, detail: string): void {
    const row = n.row;
    const why = `${reasonName(reason)}${detail ? `: ${detail}` : ''}`;
    this.d.log('warn', `node ${row.id}: delta patch refused (${why}); falling back to the full image`);
    this.d.store.event(row.id, 'delta-fallback', why);
    const t = n.transfer;
    const target = n.update.target;
    if (!target) return;
    if (t?.window.complete && !NOT_THE_PATCH.has(reason) && t.payload.baseDigest) this.d.patches.forget(t.payload.baseDigest, this.d.catalog.get(target.id)!.row.digest);
    this.d.store.addRefusal(row.id, target.id, 'delta');
  }

  /** Rebuilds the session's payload after a restart from what the row says it was. */
  restore(n: NodeRuntime, release: Release): void {
    const row = n.row;
    const session = n.update.session;
    this.payloads.restore(row, release).then(
      (payload) => {
        // Rebuilding a patch can take a while: the node may have moved on (or been restarted) meanwhile.
        if (this.isClosed() || n.transfer || n.update.session !== session || session === null) return;
        if (!payload || Math.ceil(payload.bytes.length / row.chunkSize) !== row.chunkCount) {
          this.feed(n, { kind: 'restart' });
          return;
        }
        n.transfer = new Transfer(session, payload, row.chunkSize, row.window, n.rtt, this.d.cfg.resendBudget, this.d.clock.now(), row.bitmap ?? undefined);
        this.feed(n, { kind: 'resume' });
      },
      (err: Error) => this.d.log('error', `node ${row.id}: restoring payload: ${err.message}`),
    );
  }
}
