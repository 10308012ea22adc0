import { createHash } from 'node:crypto';
import { decodeDown, encodeUp, FERRY_LORA_PORT, statusPages, StatusFlag, type LoraDown, type LoraUp } from '../../shared/lora/control.js';
import { FragDecoder } from '../../shared/lora/fec-decoder.js';
import { decodeRequests, encodeAnswers, TS004_PORT, type Ts004Answer } from '../../shared/lora/ts004.js';
import { decodeTs005Requests, encodeTs005Answers, TS005_PORT, type Ts005Answer } from '../../shared/lora/ts005.js';

/**
 * A minimal LoRa node for tests, written from docs/lora.md §7 alone: fPort 10 control, TS004 sessions around
 * FragDecoder, TS005 group setup (recorded, not enforced), and what survives a reboot (the offer, completed blocks,
 * and per block the uncoded fragments received). No signature check: tests of the node's checks live elsewhere.
 */
export interface Frame {
  fPort: number;
  bytes: Uint8Array;
}

interface Persisted {
  offer: Extract<LoraDown, { type: 'offer' }>;
  blocks: Uint8Array[];
  /** Block `blocks.length` in progress: its uncoded fragments received so far (index → data). */
  partial: Map<number, Uint8Array>;
  descriptor: number | null;
}

export class TestLoraNode {
  version: string;
  digest: Uint8Array;
  bootCount = 1;
  imageState = 2;
  persisted: Persisted | null = null;
  mcAddr: number | null = null;
  received = 0;
  private decoder: { fragIndex: number; descriptor: number; padding: number; dec: FragDecoder; block: number } | null = null;

  constructor(
    readonly devEui: string,
    readonly hw: string,
    version: string,
    image: Uint8Array,
  ) {
    this.version = version;
    this.digest = sha(image);
  }

  hello(): Frame {
    return this.up({ type: 'hello', hw: this.hw, version: this.version, digestPrefix: this.digest.subarray(0, 4), imageState: this.imageState, bootCount: this.bootCount, battery: 80, caps: 0, transferId: this.persisted?.offer.transferId });
  }

  /** A reboot loses the TS004 session (RAM); the persisted transfer comes back with lstatus pages. */
  reboot(): Frame[] {
    this.decoder = null;
    this.bootCount++;
    const out = [this.hello()];
    if (this.persisted) out.push(...this.statusFrames(StatusFlag.resume));
    return out;
  }

  /** Feeds one downlink; returns the uplinks it causes, in order. */
  onDown(fPort: number, bytes: Uint8Array): Frame[] {
    try {
      if (fPort === FERRY_LORA_PORT) return this.onControl(decodeDown(bytes));
      if (fPort === TS004_PORT) return this.onTs004(bytes);
      if (fPort === TS005_PORT) return this.onTs005(bytes);
    } catch {
      // Undecodable frames are ignored (§7.1).
    }
    return [];
  }

  private up(m: LoraUp): Frame {
    return { fPort: FERRY_LORA_PORT, bytes: encodeUp(m) };
  }

  private statusFrames(flags = 0): Frame[] {
    const p = this.persisted!;
    const done = p.blocks.length;
    if (done >= p.offer.blocks) return [this.up({ type: 'status', transferId: p.offer.transferId, done, flags })];
    const unknown = this.decoder && this.decoder.block === done ? this.decoder.dec.unknownFragments() : this.partialUnknown();
    if (unknown === null) return [this.up({ type: 'status', transferId: p.offer.transferId, done, flags })];
    return statusPages(p.offer.transferId, done, this.decoder && this.decoder.block === done ? this.decoder.dec.missingCount : unknown.length, unknown, flags).map((m) => this.up(m));
  }

  /** Unknown fragments of the block in progress from what is persisted; null when its size is not known yet. */
  private partialUnknown(): number[] | null {
    const p = this.persisted!;
    if (p.descriptor === null || !this.lastSetup) return null;
    const out: number[] = [];
    for (let i = 0; i < this.lastSetup.nbFrag; i++) if (!p.partial.has(i)) out.push(i);
    return out;
  }

  private lastSetup: { nbFrag: number } | null = null;

  private onControl(m: LoraDown): Frame[] {
    switch (m.type) {
      case 'offer':
        if (this.persisted?.offer.transferId !== m.transferId) this.persisted = { offer: m, blocks: [], partial: new Map(), descriptor: null };
        return this.statusFrames();
      case 'activate': {
        const p = this.persisted;
        if (!p || p.offer.transferId !== m.transferId || p.blocks.length < p.offer.blocks) return [this.up({ type: 'report', transferId: m.transferId, stage: 5, reason: 17 })];
        const image = concat(p.blocks.slice(1));
        this.persisted = null;
        const rebooting = this.up({ type: 'report', transferId: m.transferId, stage: 2, reason: 0 });
        this.version = p.offer.version;
        this.digest = sha(image);
        this.bootCount++;
        return [rebooting, this.hello(), this.up({ type: 'report', transferId: m.transferId, stage: 3, reason: 0 })];
      }
      case 'cancel':
        if (this.persisted?.offer.transferId === m.transferId) this.persisted = null;
        return [];
      case 'query':
        if (m.transferId === undefined) return [this.hello()];
        return this.persisted?.offer.transferId === m.transferId ? this.statusFrames() : [];
    }
  }

  private onTs004(bytes: Uint8Array): Frame[] {
    const out: Ts004Answer[] = [];
    const extra: Frame[] = [];
    for (const c of decodeRequests(bytes)) {
      if (c.cmd === 'FragSessionSetupReq') {
        const p = this.persisted;
        const block = c.descriptor & 0xffff;
        const wrong = !p || (c.descriptor >>> 16) !== (p.offer.transferId & 0xffff) || block !== p.blocks.length;
        const same = this.decoder !== null && this.decoder.descriptor === c.descriptor && this.decoder.fragIndex === c.fragIndex && this.decoder.dec.nbFrag === c.nbFrag && this.decoder.dec.fragSize === c.fragSize;
        if (!wrong && !same) {
          const dec = new FragDecoder({ nbFrag: c.nbFrag, fragSize: c.fragSize });
          if (p.descriptor !== c.descriptor || this.lastSetup?.nbFrag !== c.nbFrag || [...p.partial.values()].some((f) => f.length !== c.fragSize)) p.partial = new Map();
          p.descriptor = c.descriptor;
          for (const [i, data] of p.partial) dec.push(i + 1, data);
          this.decoder = { fragIndex: c.fragIndex, descriptor: c.descriptor, padding: c.padding, dec, block };
          this.lastSetup = { nbFrag: c.nbFrag };
        }
        out.push({ cmd: 'FragSessionSetupAns', fragIndex: c.fragIndex, encodingUnsupported: false, notEnoughMemory: false, fragIndexUnsupported: false, wrongDescriptor: wrong });
      } else if (c.cmd === 'DataFragment') {
        const d = this.decoder;
        if (!d || d.fragIndex !== c.fragIndex) continue;
        this.received++;
        const r = d.dec.push(c.counter, c.payload);
        if (c.counter <= d.dec.nbFrag && r.kind !== 'duplicate') this.persisted!.partial.set(c.counter - 1, c.payload.slice());
        if (r.kind === 'complete') extra.push(...this.blockDone(d));
      } else if (c.cmd === 'FragSessionStatusReq') {
        const d = this.decoder;
        if (!d || d.fragIndex !== c.fragIndex) continue;
        const missing = d.dec.missingCount;
        out.push({ cmd: 'FragSessionStatusAns', fragIndex: c.fragIndex, nbFragReceived: d.dec.received & 0x3fff, missingFrag: Math.min(255, missing), notEnoughMatrixMemory: d.dec.memoryError });
        if (missing > 0) extra.push(...statusPages(this.persisted!.offer.transferId, d.block, missing, d.dec.unknownFragments()).map((m) => this.up(m)));
      } else if (c.cmd === 'FragSessionDeleteReq') {
        out.push({ cmd: 'FragSessionDeleteAns', fragIndex: c.fragIndex, sessionDoesNotExist: this.decoder?.fragIndex !== c.fragIndex });
      }
    }
    return [...(out.length ? [{ fPort: TS004_PORT, bytes: encodeAnswers(out) }] : []), ...extra];
  }

  private blockDone(d: NonNullable<TestLoraNode['decoder']>): Frame[] {
    const p = this.persisted!;
    if (p.blocks.length !== d.block) return [];
    p.blocks.push(d.dec.block(d.padding).slice());
    p.partial = new Map();
    p.descriptor = null;
    if (p.blocks.length < p.offer.blocks) return [];
    const payload = concat(p.blocks.slice(1));
    const ok = payload.length === p.offer.size && Buffer.from(sha(payload).subarray(0, 4)).equals(Buffer.from(p.offer.digestPrefix));
    return [this.up({ type: 'report', transferId: p.offer.transferId, stage: ok ? 1 : 7, reason: ok ? 0 : 13 })];
  }

  private onTs005(bytes: Uint8Array): Frame[] {
    const out: Ts005Answer[] = [];
    for (const c of decodeTs005Requests(bytes)) {
      if (c.cmd === 'McGroupSetupReq') {
        this.mcAddr = c.mcAddr;
        out.push({ cmd: 'McGroupSetupAns', mcGroupId: c.mcGroupId, idError: false });
      } else if (c.cmd === 'McClassCSessionReq') {
        out.push({ cmd: 'McClassCSessionAns', mcGroupId: c.mcGroupId, drError: false, freqError: false, mcGroupUndefined: this.mcAddr === null, timeToStart: 0 });
      }
    }
    return out.length ? [{ fPort: TS005_PORT, bytes: encodeTs005Answers(out) }] : [];
  }
}

export function sha(b: Uint8Array): Uint8Array {
  return createHash('sha256').update(b).digest();
}

function concat(parts: Uint8Array[]): Uint8Array {
  return Buffer.concat(parts.map((p) => Buffer.from(p)));
}
