import { Reason } from '../../shared/errors.js';
import type { LoraDown } from '../../shared/lora/control.js';
import { AIR_WAIT_FACTOR } from '../../shared/lora/session.js';
import type { NodeStateName } from '../types.js';

/**
 * One LoRa node's transfer of one release (docs/lora.md §7.3, §7.5) as a pure state machine: offer, the blocks
 * one TS004 session at a time (the runtime runs shared/lora/session.ts for each), verification, activation and
 * confirmation. Resume after a node reboot comes in as lstatus pages flagged `resume`.
 */
export interface TransferPlan {
  transferId: number;
  version: string;
  digestPrefix: Uint8Array;
  blocks: number;
  size: number;
  blockKiB: number;
  /** Unicast Class C listening time announced in the offer. */
  classCSeconds: number;
  /** Multicast: the group's McAddr (the offer then carries it instead of Class C seconds). */
  mcAddr?: number;
  timeoutMs: number;
  maxTries: number;
}

export type TransferPhase =
  | { kind: 'offered'; tries: number; deadline: number }
  /** lstatus pages of a block in progress are arriving (answer to an offer or query, or after a reboot). */
  | { kind: 'collecting'; done: number; indices: number[]; deadline: number }
  | { kind: 'block'; index: number }
  | { kind: 'verifying'; tries: number; deadline: number }
  | { kind: 'activating'; tries: number; deadline: number }
  | { kind: 'confirming'; deadline: number }
  | { kind: 'ended'; state: NodeStateName; reason: number; detail: string };

export interface Transfer {
  plan: TransferPlan;
  phase: TransferPhase;
}

export type TransferInput =
  | { kind: 'start' }
  | { kind: 'status'; done: number; deficiency?: number; indices: readonly number[]; last: boolean; resume: boolean }
  | { kind: 'blockDone'; index: number }
  | { kind: 'blockFailed'; index: number; detail: string }
  | { kind: 'report'; stage: number; reason: number }
  | { kind: 'hello'; version: string }
  /** The LNS put the last offer, query or activate on the air: the answer timeout starts now. */
  | { kind: 'onAir' }
  | { kind: 'tick' };

export type TransferAction =
  | { kind: 'send'; msg: LoraDown }
  | { kind: 'startBlock'; index: number; resumeUnknown?: number[] }
  | { kind: 'stopBlock' }
  | { kind: 'wakeAt'; at: number };

export const Stage = { verified: 1, rebooting: 2, confirmed: 3, rolledBack: 4, rejected: 5, busy: 6, failed: 7 } as const;
/** protocol.md §7 reasons used here. */
const R = { none: Reason.none, timedOut: Reason.timeout } as const;
const CONFIRM_MS = 5 * 60_000;
/**
 * Until the LNS reports a request on the air it is not counted lost: a Class A frame waits in the LNS's device
 * queue for the node's next uplink and, with a fleet set up at once, for the gateway's duty cycle. An LNS that
 * never reports it gets a resend after this long.
 */
const UNTIL_AIR_MS = 15 * 60_000;
export const untilAir = (plan: Pick<TransferPlan, 'timeoutMs'>, now: number) => now + Math.max(AIR_WAIT_FACTOR * plan.timeoutMs, UNTIL_AIR_MS);

export function stateOf(t: Transfer): NodeStateName {
  switch (t.phase.kind) {
    case 'offered':
      return 'offered';
    case 'collecting':
    case 'block':
      return 'downloading';
    case 'verifying':
      return 'verifying';
    case 'activating':
      return 'activating';
    case 'confirming':
      return 'confirming';
    case 'ended':
      return t.phase.state;
  }
}

export function offerOf(p: TransferPlan): LoraDown {
  return { type: 'offer', transferId: p.transferId, digestPrefix: p.digestPrefix, version: p.version, blocks: p.blocks, size: p.size, blockKiB: p.blockKiB, encoding: 0, ...(p.mcAddr !== undefined ? { mcAddr: p.mcAddr } : { classCSeconds: p.classCSeconds }) };
}

type Result = { t: Transfer; actions: TransferAction[] };

const ended = (t: Transfer, state: NodeStateName, reason: number, detail: string, actions: TransferAction[] = []): Result => ({
  t: { ...t, phase: { kind: 'ended', state, reason, detail } },
  actions,
});

function wait<P extends TransferPhase>(t: Transfer, phase: P, actions: TransferAction[]): Result {
  const at = 'deadline' in phase ? phase.deadline : undefined;
  return { t: { ...t, phase }, actions: at === undefined ? actions : [...actions, { kind: 'wakeAt', at }] };
}

/** The node holds blocks 0..done−1 (and maybe some of block `done`): go on from there. */
function continueFrom(t: Transfer, done: number, resumeUnknown: number[] | undefined, now: number, actions: TransferAction[]): Result {
  // Nothing is sent on entering verifying (the node reports by itself): a query follows one timeout of silence.
  if (done >= t.plan.blocks) return wait(t, { kind: 'verifying', tries: 1, deadline: now + t.plan.timeoutMs }, actions);
  return { t: { ...t, phase: { kind: 'block', index: done } }, actions: [...actions, { kind: 'startBlock', index: done, resumeUnknown }] };
}

export function stepTransfer(t: Transfer, input: TransferInput, now: number): Result {
  const p = t.phase;
  const plan = t.plan;
  if (p.kind === 'ended') return { t, actions: [] };
  switch (input.kind) {
    case 'start':
      return wait(t, { kind: 'offered', tries: 1, deadline: untilAir(plan, now) }, [{ kind: 'send', msg: offerOf(plan) }]);
    case 'onAir':
      if (p.kind !== 'offered' && p.kind !== 'verifying' && p.kind !== 'activating') return { t, actions: [] };
      return wait(t, { ...p, deadline: now + plan.timeoutMs }, []);
    case 'status': {
      if (input.done > plan.blocks) return { t, actions: [] };
      const stop: TransferAction[] = p.kind === 'block' ? [{ kind: 'stopBlock' }] : [];
      // Pages of repair status belong to the running session (the runtime routes them there); here only the
      // answer to an offer or query, or what a rebooted node holds, moves the transfer.
      if (p.kind === 'block' && !input.resume && input.done === p.index) return { t, actions: [] };
      // A node keeps a transfer with every block done only once the payload verified (it drops one that fails):
      // this lstatus stands for an lreport{verified} that was lost or sent before the agent was listening.
      if (p.kind === 'verifying' && input.done >= plan.blocks) return stepTransfer(t, { kind: 'report', stage: Stage.verified, reason: R.none }, now);
      if (p.kind === 'activating' || p.kind === 'confirming') return { t, actions: [] };
      if (input.deficiency === undefined || input.done >= plan.blocks) return continueFrom(t, input.done, undefined, now, stop);
      const prev = p.kind === 'collecting' && p.done === input.done ? p.indices : [];
      const indices = [...new Set([...prev, ...input.indices])];
      if (!input.last) return wait(t, { kind: 'collecting', done: input.done, indices, deadline: now + plan.timeoutMs }, stop);
      // The block's unicast re-setup drops whatever parity rows the node holds (a former group member's), so its
      // complete unsolved list is then exactly what it lacks (after a reboot it holds none anyway).
      return continueFrom(t, input.done, indices, now, stop);
    }
    case 'blockDone':
      if (p.kind !== 'block' || p.index !== input.index) return { t, actions: [] };
      return continueFrom(t, p.index + 1, undefined, now, []);
    case 'blockFailed':
      if (p.kind !== 'block' || p.index !== input.index) return { t, actions: [] };
      return ended(t, 'failed', R.none, `block ${input.index}: ${input.detail}`, [{ kind: 'send', msg: { type: 'cancel', transferId: plan.transferId, reason: Reason.cancelled } }]);
    case 'report':
      switch (input.stage) {
        case Stage.verified:
          if (p.kind === 'activating' || p.kind === 'confirming') return { t, actions: [] };
          return wait(t, { kind: 'activating', tries: 1, deadline: untilAir(plan, now) }, [...(p.kind === 'block' ? [{ kind: 'stopBlock' } as TransferAction] : []), { kind: 'send', msg: { type: 'activate', transferId: plan.transferId } }]);
        case Stage.rebooting:
          return wait(t, { kind: 'confirming', deadline: now + CONFIRM_MS }, []);
        case Stage.confirmed:
          return ended(t, 'confirmed', R.none, '');
        case Stage.rolledBack:
          return ended(t, 'rolledBack', input.reason, 'the node rolled back');
        case Stage.rejected:
          return ended(t, 'rejected', input.reason, 'the node rejected the transfer', p.kind === 'block' ? [{ kind: 'stopBlock' }] : []);
        case Stage.failed:
          return ended(t, 'failed', input.reason, 'the node could not verify the image', p.kind === 'block' ? [{ kind: 'stopBlock' }] : []);
        default:
          return { t, actions: [] };
      }
    case 'hello':
      // A node running the target after activation has rebooted into it; the confirmation report follows.
      if (p.kind === 'activating' && input.version === plan.version) return wait(t, { kind: 'confirming', deadline: now + CONFIRM_MS }, []);
      return { t, actions: [] };
    case 'tick': {
      if (!('deadline' in p) || now < p.deadline) return { t, actions: [] };
      if (p.kind === 'confirming') return ended(t, 'timedOut', R.timedOut, 'no confirmation after activation');
      if (p.kind === 'collecting') return continueFrom(t, p.done, undefined, now, []);
      if (p.tries >= plan.maxTries) return ended(t, 'timedOut', R.timedOut, `no answer in ${p.kind} after ${p.tries} tries`);
      const msg: LoraDown = p.kind === 'offered' ? offerOf(plan) : p.kind === 'verifying' ? { type: 'query', transferId: plan.transferId } : { type: 'activate', transferId: plan.transferId };
      return wait(t, { ...p, tries: p.tries + 1, deadline: untilAir(plan, now) }, [{ kind: 'send', msg }]);
    }
  }
}
