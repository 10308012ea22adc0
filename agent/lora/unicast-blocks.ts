import { regionByName, RX2_FREQUENCY_HZ } from '../../shared/lora/duty.js';
import { blockFragmentSize, fragmentBlock } from '../../shared/lora/fec.js';
import { MAX_FRAGMENT_COUNTER } from '../../shared/lora/fec-decoder.js';
import { maxFragmentSize, type Region } from '../../shared/lora/regions.js';
import { initialSession, step, type SessionEffect, type SessionInput } from '../../shared/lora/session.js';
import type { Release } from '../types.js';
import { cancel, type LoraClock } from './clock.js';
import type { DownlinkQueue } from './downlinks.js';
import type { MulticastGroups } from './groups.js';
import { downlinkDr, lowerDr, setBlockDone, UNICAST_ROUNDS, type LoraNode } from './record.js';
import type { TransferInput } from './transfer-fsm.js';

/**
 * One node's TS004 block sessions outside a multicast group (docs/lora.md §7.3): sets a block up at the node's
 * downlink DR, runs shared/lora/session.ts over the airtime-scheduled queue (exact uncoded resend, timeouts from
 * the LNS's txack), steps the DR down when the LNS refuses a frame as too big, and tells the node's transfer
 * machine when the block is done or failed. A block of a node still in a group goes to the group instead.
 */
export interface UnicastBlockDeps {
  region: Region['name'];
  answerTimeoutMs: number;
  maxTries: number;
  queue: DownlinkQueue;
  groups: MulticastGroups;
  clock: LoraClock;
  release: (id: string | null) => Release | undefined;
  feedTransfer: (n: LoraNode, input: TransferInput) => void;
  /** Runs a callback, logging what it throws (a timer or LNS event must not take the agent down). */
  guard: (f: () => void) => void;
  log: (level: 'info' | 'warn' | 'error', msg: string) => void;
}

const TOO_BIG = /too big for the data rate/;

export class UnicastBlocks {
  constructor(private readonly d: UnicastBlockDeps) {}

  start(n: LoraNode, index: number, resumeUnknown: number[] | undefined, unicast = false): void {
    if (!unicast && this.d.groups.wantBlock(n, index, resumeUnknown)) return;
    const t = n.transfer;
    if (!t) return;
    const release = this.d.release(n.row.targetRelease);
    if (!release) return this.d.feedTransfer(n, { kind: 'blockFailed', index, detail: 'the release is gone' });
    const B = t.plan.blockKiB * 1024;
    const data = index === 0 ? release.row.manifest : release.image.subarray((index - 1) * B, index * B);
    const dr = Math.min(downlinkDr(this.d.region, n.dr), n.drCap ?? Infinity);
    const { fragments, padding } = fragmentBlock(data, blockFragmentSize(data.length, maxFragmentSize(regionByName(this.d.region), dr)));
    if (fragments.length > MAX_FRAGMENT_COUNTER / 2) return this.d.feedTransfer(n, { kind: 'blockFailed', index, detail: `${fragments.length} fragments at DR${dr}: use a smaller block` });
    const state = initialSession({
      members: [n.row.id], multicast: false, fragIndex: index % 4, descriptor: (((t.plan.transferId & 0xffff) << 16) | index) >>> 0, fragments, padding,
      loss: n.loss, firstRoundMargin: 1, repairTarget: 0.75, answerTimeoutMs: this.d.answerTimeoutMs, maxRounds: UNICAST_ROUNDS, maxTries: this.d.maxTries, pages: true, resendUncoded: true,
      resumeUnknown: resumeUnknown ? { [n.row.id]: resumeUnknown } : undefined,
    });
    n.session = { index, state, dr, ids: new Set() };
    this.feed(n, { kind: 'start' }, index % 4);
  }

  feed(n: LoraNode, input: SessionInput, fragIndex: number): void {
    if (this.d.groups.feed(n, input, fragIndex)) return;
    const s = n.session;
    if (!s || s.index % 4 !== fragIndex) return;
    const r = step(s.state, input, this.d.clock.now());
    s.state = r.state;
    for (const e of r.effects) this.effect(n, s, e);
  }

  private effect(n: LoraNode, s: NonNullable<LoraNode['session']>, e: SessionEffect): void {
    const current = () => n.session === s;
    switch (e.kind) {
      case 'send':
        this.d.queue.push({
          to: { kind: 'node', devEui: n.row.id }, fPort: e.fPort, bytes: e.bytes, dr: s.dr, frequencyHz: RX2_FREQUENCY_HZ[this.d.region],
          onSent: (id) => this.d.guard(() => {
            if (!current()) return;
            if (s.ids.size < 100_000) s.ids.add(id);
            this.feed(n, { kind: 'sent' }, s.index % 4);
          }),
          onError: (why) => this.d.guard(() => current() && this.feed(n, /does not fit/.test(why) ? { kind: 'tooBig', devEui: n.row.id } : { kind: 'sent' }, s.index % 4)),
          onAir: e.fragment ? undefined : () => this.d.guard(() => current() && this.feed(n, { kind: 'onAir' }, s.index % 4)),
        });
        if (e.fragment) n.row.bytesSent += e.bytes.length;
        return;
      case 'wakeAt':
        cancel(n.sessionTimer);
        n.sessionTimer = this.d.clock.after(e.at - this.d.clock.now(), () => this.d.guard(() => current() && this.feed(n, { kind: 'tick' }, s.index % 4)));
        return;
      case 'report': {
        const rep = e.report;
        if (rep.kind === 'memberDone') n.loss = rep.loss;
        else if (rep.kind === 'round') n.row.retransmits += rep.round > 1 ? rep.fragments : 0;
        else if (rep.kind === 'memberFailed') n.row.detail = rep.reason;
        else if (rep.kind === 'done' || rep.kind === 'failed') {
          cancel(n.sessionTimer);
          if (!current()) return;
          n.session = undefined;
          const lower = rep.kind === 'failed' && TOO_BIG.test(rep.reason) ? lowerDr(this.d.region, s.dr) : undefined;
          if (rep.kind === 'done' && s.state.completed.includes(n.row.id)) {
            setBlockDone(n.row, s.index);
            this.d.feedTransfer(n, { kind: 'blockDone', index: s.index });
          } else if (lower !== undefined) {
            // The LNS sends at a lower DR than the uplink suggested (e.g. Class C on RX2's DR): smaller fragments.
            n.drCap = lower;
            this.d.queue.dropFor(n.row.id);
            this.d.log('warn', `LoRa node ${n.row.id}: block ${s.index} too big at DR${s.dr}, setting it up again at DR${lower}`);
            this.start(n, s.index, undefined, n.groupAddr === undefined);
          } else this.d.feedTransfer(n, { kind: 'blockFailed', index: s.index, detail: rep.kind === 'failed' ? rep.reason : n.row.detail });
        }
        return;
      }
    }
  }
}
