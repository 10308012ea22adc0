import { ProtocolError } from '../../shared/errors.js';
import { specDecoderRamBytes } from '../../shared/lora/fec.js';
import { FragDecoder, type FragmentStore } from '../../shared/lora/fec-decoder.js';
import { decodeRequests, encodeAnswers, TS004_PACKAGE_IDENTIFIER, TS004_PACKAGE_VERSION, type Ts004Answer, type Ts004Request } from '../../shared/lora/ts004.js';

/**
 * The node side of TS004 v1 (fPort 201): four fragmentation sessions (FragIndex 0–3), each a FragDecoder over a
 * block store the node runtime provides (flash). `stepFrag(state, input, env)` is the whole behaviour; the
 * decoders are the node's RAM and live inside the state (they are mutated in place, so treat a state as
 * consumed once stepped). Effects tell the runtime what to send and what to persist.
 *
 * Rules (TS004 v1.0.0 §3, LoRaMac-node LmhpFragmentation.c / FragDecoder.c):
 * - Setup on an active FragIndex stops that session and clears its context, unless the runtime says it holds
 *   fragments of that very block (same Descriptor) and resumes them (docs/lora.md §7.3, ferry's extension).
 * - FragAlgo ≠ 0 → bit0; an L (losses the RAM budget holds, L(L+1)/16 + 2L B) below the node's minimum, or a block larger than the store → bit1; a
 *   Descriptor the runtime does not accept → bit3.
 * - DataFragment: counters below the last one seen are dropped ("out of order", as LoRaMac-node), duplicates
 *   counted once; multicast fragments only for a session bound to that group; after completion everything on
 *   that FragIndex is dropped until the session is deleted.
 * - Status answers are immediate on unicast and spread over rand·2^(BlockAckDelay+4) s on multicast; with
 *   Participants = 0 a node that misses nothing stays silent.
 */
export interface FragSetup {
  fragIndex: number;
  mcGroupBitMask: number;
  nbFrag: number;
  fragSize: number;
  padding: number;
  descriptor: number;
  blockAckDelay: number;
}

export type FragSlot =
  | { kind: 'idle' }
  | { kind: 'receiving'; setup: FragSetup; decoder: FragDecoder; lastCounter: number }
  | { kind: 'complete'; setup: FragSetup; received: number };

export interface FragState {
  readonly slots: readonly FragSlot[];
}

export const initialFragState: FragState = { slots: [{ kind: 'idle' }, { kind: 'idle' }, { kind: 'idle' }, { kind: 'idle' }] };

export type FragInput =
  /** A frame on fPort 201; `group` is the McGroupID it came on, null for unicast. */
  | { kind: 'frame'; bytes: Uint8Array; group: number | null }
  /** After a reset: a session the runtime persisted, with the data fragments it holds. */
  | { kind: 'restore'; setup: FragSetup; known: readonly number[]; complete: boolean };

export type FragEffect =
  | { kind: 'uplink'; bytes: Uint8Array; delayMs: number }
  | { kind: 'opened'; setup: FragSetup; resumed: boolean }
  | { kind: 'closed'; fragIndex: number }
  /** A data fragment's bytes are now in the store (received uncoded, or solved). */
  | { kind: 'stored'; fragIndex: number; held: number }
  | { kind: 'complete'; setup: FragSetup }
  /** A unicast status request for a FragIndex with no session: TS004 v1 stays silent; ferry's node says where it is. */
  | { kind: 'noSession'; fragIndex: number }
  | { kind: 'log'; level: 'info' | 'warn'; msg: string };

export type OpenResult =
  | { ok: true; store: FragmentStore; capacity: number; heldIndices?: readonly number[] }
  | { ok: false; why: 'wrongDescriptor' | 'notEnoughMemory'; detail: string };

export interface FragEnv {
  /** Decoder RAM the node may spend (bytes, the spec's layout). */
  ramBudget: number;
  /** Least fraction of a block's fragments the decoder must be able to lose; a setup whose L (from the RAM budget) is below it is refused. */
  lossTolerance: number;
  /** The runtime's block store for a setup, or why it refuses (descriptor it does not know, no space). */
  open(setup: FragSetup): OpenResult;
  random(): number;
}

export interface FragStep {
  state: FragState;
  effects: FragEffect[];
}

/** The L a node reserves for an M-fragment block: as many lost fragments as its RAM budget holds, at most M. */
export function decoderLosses(nbFrag: number, ramBudget: number): number {
  let l = 0;
  while (l < nbFrag && specDecoderRamBytes(l + 1) <= ramBudget) l++;
  return l;
}

export function stepFrag(state: FragState, input: FragInput, env: FragEnv): FragStep {
  const slots = [...state.slots];
  const effects: FragEffect[] = [];
  if (input.kind === 'restore') {
    restore(slots, input, env, effects);
    return { state: { slots }, effects };
  }
  let cmds: Ts004Request[];
  try {
    cmds = decodeRequests(input.bytes);
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw e;
    effects.push({ kind: 'log', level: 'warn', msg: `TS004 frame ignored: ${e.message}` });
    return { state, effects };
  }
  const now: Ts004Answer[] = [];
  for (const cmd of cmds) {
    if (input.group !== null && cmd.cmd !== 'DataFragment' && cmd.cmd !== 'FragSessionStatusReq' && cmd.cmd !== 'FragSessionSetupReq') {
      effects.push({ kind: 'log', level: 'warn', msg: `TS004 ${cmd.cmd} on multicast ignored` });
      continue;
    }
    switch (cmd.cmd) {
      case 'PackageVersionReq':
        now.push({ cmd: 'PackageVersionAns', packageIdentifier: TS004_PACKAGE_IDENTIFIER, packageVersion: TS004_PACKAGE_VERSION });
        break;
      case 'FragSessionSetupReq':
        now.push(setup(slots, cmd, env, effects));
        break;
      case 'FragSessionDeleteReq': {
        const had = slots[cmd.fragIndex].kind !== 'idle';
        slots[cmd.fragIndex] = { kind: 'idle' };
        if (had) effects.push({ kind: 'closed', fragIndex: cmd.fragIndex });
        now.push({ cmd: 'FragSessionDeleteAns', fragIndex: cmd.fragIndex, sessionDoesNotExist: !had });
        break;
      }
      case 'FragSessionStatusReq': {
        const ans = status(slots[cmd.fragIndex], cmd.fragIndex, cmd.participants);
        if (!ans) {
          if (input.group === null && slots[cmd.fragIndex].kind === 'idle') effects.push({ kind: 'noSession', fragIndex: cmd.fragIndex });
          break;
        }
        if (input.group === null) now.push(ans);
        else {
          const s = slots[cmd.fragIndex] as Exclude<FragSlot, { kind: 'idle' }>;
          const spread = 2 ** (s.setup.blockAckDelay + 4) * 1000;
          effects.push({ kind: 'uplink', bytes: encodeAnswers([ans]), delayMs: Math.floor(env.random() * spread) });
        }
        break;
      }
      case 'DataFragment':
        fragment(slots, cmd, input.group, effects);
        break;
    }
  }
  if (now.length > 0) effects.push({ kind: 'uplink', bytes: encodeAnswers(now), delayMs: 0 });
  return { state: { slots }, effects };
}

function setup(slots: FragSlot[], c: Extract<Ts004Request, { cmd: 'FragSessionSetupReq' }>, env: FragEnv, effects: FragEffect[]): Ts004Answer {
  const s: FragSetup = {
    fragIndex: c.fragIndex, mcGroupBitMask: c.mcGroupBitMask, nbFrag: c.nbFrag, fragSize: c.fragSize, padding: c.padding, descriptor: c.descriptor, blockAckDelay: c.blockAckDelay,
  };
  const ans = { cmd: 'FragSessionSetupAns' as const, fragIndex: c.fragIndex, encodingUnsupported: false, notEnoughMemory: false, fragIndexUnsupported: false, wrongDescriptor: false };
  const old = slots[c.fragIndex];
  const same = old.kind !== 'idle' && sameBlock(old.setup, s);
  if (old.kind !== 'idle' && !same) effects.push({ kind: 'closed', fragIndex: c.fragIndex });
  slots[c.fragIndex] = { kind: 'idle' };
  const carried = same ? heldIndices(old) : [];
  if (c.fragAlgo !== 0) {
    effects.push({ kind: 'log', level: 'warn', msg: `FragSessionSetup ${c.fragIndex} refused: FragAlgo ${c.fragAlgo} unsupported` });
    return { ...ans, encodingUnsupported: true };
  }
  const losses = decoderLosses(c.nbFrag, env.ramBudget);
  const needed = Math.min(c.nbFrag, Math.ceil(env.lossTolerance * c.nbFrag));
  if (losses < needed) {
    effects.push({ kind: 'log', level: 'warn', msg: `FragSessionSetup ${c.fragIndex} refused: ${env.ramBudget} B of decoder RAM tolerate ${losses} lost fragments, the node wants ${needed} (${specDecoderRamBytes(needed)} B)` });
    return { ...ans, notEnoughMemory: true };
  }
  const opened = env.open(s);
  if (!opened.ok) {
    effects.push({ kind: 'log', level: 'warn', msg: `FragSessionSetup ${c.fragIndex} refused: ${opened.detail}` });
    return opened.why === 'wrongDescriptor' ? { ...ans, wrongDescriptor: true } : { ...ans, notEnoughMemory: true };
  }
  if (c.nbFrag * c.fragSize - c.padding > opened.capacity) {
    effects.push({ kind: 'log', level: 'warn', msg: `FragSessionSetup ${c.fragIndex} refused: block of ${c.nbFrag * c.fragSize - c.padding} B exceeds ${opened.capacity} B` });
    return { ...ans, notEnoughMemory: true };
  }
  const decoder = new FragDecoder({ nbFrag: c.nbFrag, fragSize: c.fragSize, maxMissing: losses, store: opened.store });
  const held = same && old.kind === 'complete' ? Array.from({ length: c.nbFrag }, (_, i) => i) : [...new Set([...(opened.heldIndices ?? []), ...carried])];
  decoder.restoreKnown(held);
  if (decoder.complete) {
    slots[c.fragIndex] = { kind: 'complete', setup: s, received: 0 };
    effects.push({ kind: 'opened', setup: s, resumed: true }, { kind: 'complete', setup: s });
  } else {
    slots[c.fragIndex] = { kind: 'receiving', setup: s, decoder, lastCounter: 0 };
    effects.push({ kind: 'opened', setup: s, resumed: held.length > 0 });
  }
  return ans;
}

function status(slot: FragSlot, fragIndex: number, participants: boolean): Ts004Answer | undefined {
  if (slot.kind === 'idle') return undefined;
  const missing = slot.kind === 'complete' ? 0 : slot.decoder.missingCount;
  if (!participants && missing === 0) return undefined;
  const received = slot.kind === 'complete' ? slot.received : slot.decoder.received;
  return {
    cmd: 'FragSessionStatusAns', fragIndex, nbFragReceived: Math.min(received, 0x3fff), missingFrag: Math.min(missing, 255),
    notEnoughMatrixMemory: slot.kind === 'receiving' && slot.decoder.memoryError,
  };
}

function fragment(slots: FragSlot[], c: Extract<Ts004Request, { cmd: 'DataFragment' }>, group: number | null, effects: FragEffect[]): void {
  const slot = slots[c.fragIndex];
  if (slot.kind !== 'receiving') return; // idle, or complete: dropped until deleted
  if (group !== null && (slot.setup.mcGroupBitMask & (1 << group)) === 0) return;
  if (c.counter < slot.lastCounter) return; // out of order
  const before = slot.decoder.missingCount;
  const out = slot.decoder.push(c.counter, c.payload);
  slots[c.fragIndex] = { ...slot, lastCounter: c.counter };
  if (out.kind === 'rejected') {
    effects.push({ kind: 'log', level: 'warn', msg: `DataFragment ${c.counter} on session ${c.fragIndex} rejected: ${out.reason}` });
    return;
  }
  if (out.kind === 'complete') {
    slots[c.fragIndex] = { kind: 'complete', setup: slot.setup, received: slot.decoder.received };
    effects.push({ kind: 'stored', fragIndex: c.fragIndex, held: slot.setup.nbFrag }, { kind: 'complete', setup: slot.setup });
    return;
  }
  if (out.kind === 'stored' && c.counter <= slot.setup.nbFrag) {
    effects.push({ kind: 'stored', fragIndex: c.fragIndex, held: slot.setup.nbFrag - before });
  }
}

function restore(slots: FragSlot[], r: Extract<FragInput, { kind: 'restore' }>, env: FragEnv, effects: FragEffect[]): void {
  const s = r.setup;
  if (r.complete) {
    slots[s.fragIndex] = { kind: 'complete', setup: s, received: 0 };
    return;
  }
  const opened = env.open(s);
  if (!opened.ok) {
    effects.push({ kind: 'log', level: 'warn', msg: `persisted session ${s.fragIndex} dropped: ${opened.detail}` });
    return;
  }
  const decoder = new FragDecoder({ nbFrag: s.nbFrag, fragSize: s.fragSize, maxMissing: decoderLosses(s.nbFrag, env.ramBudget), store: opened.store });
  decoder.restoreKnown(r.known);
  slots[s.fragIndex] = decoder.complete ? { kind: 'complete', setup: s, received: 0 } : { kind: 'receiving', setup: s, decoder, lastCounter: 0 };
}

function sameBlock(a: FragSetup, b: FragSetup): boolean {
  return a.descriptor === b.descriptor && a.nbFrag === b.nbFrag && a.fragSize === b.fragSize && a.padding === b.padding;
}

/** Fragments (0-based) of a receiving session the node holds: what it persists. */
export function heldIndices(slot: FragSlot): number[] {
  if (slot.kind !== 'receiving') return [];
  const out: number[] = [];
  for (let i = 0; i < slot.setup.nbFrag; i++) if (slot.decoder.isKnown(i)) out.push(i);
  return out;
}
