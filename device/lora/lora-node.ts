import type { KeyObject } from 'node:crypto';
import { ProtocolError, Reason } from '../../shared/errors.js';
import { decodeDown, encodeUp, FERRY_LORA_PORT, statusPages, StatusFlag, type LoraDown, type LoraUp } from '../../shared/lora/control.js';
import { memoryStore } from '../../shared/lora/fec-decoder.js';
import { TS004_PORT } from '../../shared/lora/ts004.js';
import { sha256, verifyManifest, ManifestFlag } from '../../shared/manifest.js';
import { Capability, Encoding, Stage } from '../../shared/messages.js';
import { compareVersions } from '../../shared/version.js';
import { Flash } from '../flash.js';
import { makeLayout } from '../layout.js';
import { NvsKey } from '../nvs.js';
import type { BootProfileName } from '../profiles.js';
import { DeviceSystem, RebootRequest, type ResetReason } from '../system.js';
import { heldIndices, initialFragState, stepFrag, type FragEffect, type FragSetup, type FragState, type OpenResult } from './frag-session.js';
import { erasedByDoneBlocks, forgetTransfer, loadBlock, loadTransfer, saveBlock, saveTransfer, SlotBlockStore, type LoraTransfer } from './node-store.js';
import { Ts005Node } from './ts005-node.js';

/**
 * A simulated LoRa node (docs/lora.md §7): the ESP-IDF/MCUboot node model of device/ (flash, NVS, boot profile,
 * anti-rollback counter, trial boots) with ferry's fPort 10 control, TS004 on 201 and TS005 on 200 instead of
 * MQTT. It verifies the signed manifest (block 0) and the image digest itself, and reports boot, confirm and
 * rollback as they happened. All calls take the simulator's virtual time; what to send comes back as uplinks.
 */
export interface LoraNodeOptions {
  devEui: string;
  hw: string;
  version: string;
  trust: readonly KeyObject[];
  profile?: BootProfileName;
  /** Decoder RAM budget in bytes (spec layout). Default 8 KiB. */
  ramBudget?: number;
  lossTolerance?: number;
  slotSize?: number;
  failSelfTest?: boolean;
  /** The node's data rate (EU868; downlinks use the same). Default 5. */
  dr?: number;
  random: () => number;
  flash?: Flash;
  log?: (level: 'info' | 'warn', msg: string) => void;
}

export interface NodeUplink {
  fPort: number;
  bytes: Uint8Array;
  delayMs: number;
}

export interface NodeOutput {
  uplinks: NodeUplink[];
  /** The node resets after this many ms (activation). */
  rebootAfterMs?: number;
}

const SAVE_EVERY = 16;
/** Block 0 (the manifest) is held in RAM: at most this big. */
const MANIFEST_BLOCK_MAX = 1024;

export class LoraNode {
  readonly flash: Flash;
  readonly sys: DeviceSystem;
  readonly ts005: Ts005Node;
  private frag: FragState = initialFragState;
  private transfer: LoraTransfer | undefined;
  private erased = new Set<number>();
  private manifestStore = memoryStore(1, 1);
  /** The setup the manifest store was opened for: a re-setup of that same block keeps what it holds. */
  private manifestSetup: FragSetup | undefined;
  private sinceSave = 0;
  private classCSeconds = 0;
  private classCUntil = -Infinity;
  private rejected = new Set<number>();
  private readonly log: (level: 'info' | 'warn', msg: string) => void;

  constructor(readonly opts: LoraNodeOptions) {
    const layout = makeLayout(opts.slotSize ?? 256 * 1024, 8);
    this.flash = opts.flash ?? new Flash(layout.flashSize);
    this.sys = new DeviceSystem(this.flash, layout, { hw: opts.hw, version: opts.version, profile: opts.profile, initialImage: undefined });
    this.ts005 = new Ts005Node();
    this.log = opts.log ?? (() => {});
  }

  get devEui(): string {
    return this.opts.devEui;
  }

  get runningVersion(): string {
    return this.sys.running.version;
  }

  /** Power-on or reset: RAM (TS004 sessions, TS005 groups, Class C) is gone; flash and NVS remain. */
  boot(reset: ResetReason, nowMs: number): NodeOutput {
    this.frag = initialFragState;
    this.ts005.reset();
    this.classCUntil = -Infinity;
    this.manifestStore = memoryStore(1, 1);
    this.manifestSetup = undefined;
    for (let i = 0; ; i++) {
      try {
        this.sys.powerOn(i === 0 ? reset : 'software');
        break;
      } catch (e) {
        if (!(e instanceof RebootRequest) || i > 4) throw e;
      }
    }
    const reports: LoraUp[] = [];
    if (this.sys.trial) {
      if (this.opts.failSelfTest) {
        this.sys.selfTestFailed(Reason.selfTestFailed);
        this.sys.powerOn('software');
      } else {
        const r = this.sys.selfTestPassed();
        if (r) reports.push({ type: 'report', transferId: r.session, stage: r.stage, reason: r.reason });
      }
    }
    for (const p of this.sys.pending) reports.push({ type: 'report', transferId: p.session, stage: p.stage, reason: p.reason });
    this.sys.pending.length = 0;
    this.sys.markHealthy();
    this.transfer = loadTransfer(this.sys.nvs);
    if (this.transfer && (reports.length > 0 || this.sys.activation)) {
      // The transfer's image was activated: its outcome is reported, the transfer is over.
      forgetTransfer(this.sys.nvs);
      this.transfer = undefined;
    }
    const ups: LoraUp[] = [this.hello(), ...reports];
    const t = this.transfer;
    if (t && !t.verified && t.done >= 1) {
      this.erased = erasedByDoneBlocks(t.done, t.blockKiB);
      const saved = loadBlock(this.sys.nvs);
      if (saved && (saved.setup.descriptor & 0xffff) === t.done && saved.setup.descriptor >>> 16 === (t.id & 0xffff)) {
        const r = stepFrag(this.frag, { kind: 'restore', setup: saved.setup, known: saved.known, complete: false }, this.env(nowMs));
        this.frag = r.state;
      }
    }
    if (t) ups.push(...this.statusUps(StatusFlag.resume));
    this.log('info', `${this.devEui} booted ${this.sys.running.version} (${reset})${t ? `, holds transfer ${t.id} at block ${t.done}/${t.blocks}` : ''}`);
    return { uplinks: ups.map((m) => ({ fPort: FERRY_LORA_PORT, bytes: encodeUp(m), delayMs: 0 })) };
  }

  /** A downlink the node received; `mcAddr` is set when it came on a multicast group. */
  receive(fPort: number, bytes: Uint8Array, mcAddr: number | null, nowMs: number): NodeOutput {
    if (this.classCSeconds > 0 && (fPort === FERRY_LORA_PORT || fPort === TS004_PORT)) this.classCUntil = nowMs + this.classCSeconds * 1000;
    if (fPort === 200) return { uplinks: this.ts005.receive(bytes, mcAddr !== null, this.opts.random, nowMs, this.log) };
    if (fPort === TS004_PORT) {
      const group = mcAddr === null ? null : this.ts005.groupOf(mcAddr);
      if (mcAddr !== null && group === undefined) return { uplinks: [] };
      const r = stepFrag(this.frag, { kind: 'frame', bytes, group: group ?? null }, this.env(nowMs));
      this.frag = r.state;
      return { uplinks: this.apply(r.effects) };
    }
    if (fPort === FERRY_LORA_PORT) {
      if (mcAddr !== null) return { uplinks: [] };
      let m: LoraDown;
      try {
        m = decodeDown(bytes);
      } catch (e) {
        if (!(e instanceof ProtocolError)) throw e;
        this.log('warn', `${this.devEui}: fPort 10 frame ignored: ${e.message}`);
        return { uplinks: [] };
      }
      return this.control(m, nowMs);
    }
    this.log('warn', `${this.devEui}: frame on fPort ${fPort} ignored`);
    return { uplinks: [] };
  }

  /** Where the node listens continuously now (Class C), if anywhere: the multicast window, or unicast Class C. */
  classC(nowMs: number): { frequencyHz: number; dr: number } | undefined {
    const w = this.ts005.openWindow(nowMs);
    if (w) return { frequencyHz: w.frequencyHz, dr: w.dr };
    // Unicast Class C (docs/lora.md §7.6): the RX2 frequency at the node's downlink DR (EU868: its uplink DR).
    return nowMs < this.classCUntil ? { frequencyHz: 869_525_000, dr: this.opts.dr ?? 5 } : undefined;
  }

  /** What a busy node sends when it has nothing else to say: one lstatus (docs/lora.md §7.6). */
  keepAlive(): { fPort: number; bytes: Uint8Array } | undefined {
    const s = this.statusUps(0)[0];
    return s ? { fPort: FERRY_LORA_PORT, bytes: encodeUp(s) } : undefined;
  }

  /** The node owes the network an uplink soon (a transfer in progress: keeps Class A downlinks flowing). */
  get busy(): boolean {
    return this.transfer !== undefined;
  }

  private hello(): LoraUp {
    const r = this.sys.running;
    return {
      type: 'hello', hw: this.opts.hw.slice(0, 10), version: r.version.slice(0, 10), digestPrefix: r.digest.subarray(0, 4), imageState: this.sys.imageState,
      bootCount: this.sys.bootCount & 0xffff, caps: (this.sys.profile.rollback ? Capability.rollback : 0) | Capability.antiRollback,
      transferId: this.transfer?.id,
    };
  }

  private control(m: LoraDown, nowMs: number): NodeOutput {
    const up = (list: LoraUp[], extra: Partial<NodeOutput> = {}): NodeOutput => ({ uplinks: list.map((x) => ({ fPort: FERRY_LORA_PORT, bytes: encodeUp(x), delayMs: 0 })), ...extra });
    const report = (id: number, stage: number, reason: number): LoraUp => ({ type: 'report', transferId: id, stage, reason });
    switch (m.type) {
      case 'query':
        if (m.transferId === undefined) return up([this.hello()]);
        return up(this.transfer?.id === m.transferId ? this.statusUps(0) : [report(m.transferId, Stage.rejected, Reason.unknownSession)]);
      case 'cancel':
        if (this.transfer?.id === m.transferId) this.dropTransfer();
        return { uplinks: [] };
      case 'activate': {
        const t = this.transfer;
        if (!t || t.id !== m.transferId || !t.verified) return up([report(m.transferId, Stage.rejected, t?.id === m.transferId ? Reason.badField : Reason.unknownSession)]);
        this.sys.activate(t.id, t.version);
        return up([report(t.id, Stage.rebooting, Reason.none)], { rebootAfterMs: 1000 });
      }
      case 'offer': {
        if (this.sys.trial || this.sys.activation) return { uplinks: [] };
        this.classCSeconds = m.classCSeconds ?? 0;
        if (this.classCSeconds > 0) this.classCUntil = nowMs + this.classCSeconds * 1000;
        if (this.transfer?.id === m.transferId) return up(this.statusUps(0));
        const running = this.sys.running;
        let refusal: number | undefined;
        if (m.encoding !== Encoding.full) refusal = Reason.deltaFailed;
        else if (compareVersions(m.version, running.version) === 0 && running.digest.subarray(0, 4).equals(m.digestPrefix)) return up([report(m.transferId, Stage.confirmed, Reason.none)]);
        else if (compareVersions(m.version, running.version) <= 0) refusal = Reason.downgrade;
        else if (m.size > this.sys.imageCapacity) refusal = Reason.noSpace;
        if (refusal !== undefined) {
          this.sys.recordRejection(m.version, refusal);
          return up([report(m.transferId, Stage.rejected, refusal)]);
        }
        this.dropTransfer();
        this.transfer = {
          id: m.transferId, digestPrefix: Buffer.from(m.digestPrefix), version: m.version, blocks: m.blocks, size: m.size, blockKiB: m.blockKiB, encoding: m.encoding,
          mcAddr: m.mcAddr ?? 0, done: 0, verified: false,
        };
        saveTransfer(this.sys.nvs, this.transfer);
        this.erased = new Set();
        return up(this.statusUps(0));
      }
    }
  }

  private dropTransfer(): void {
    forgetTransfer(this.sys.nvs);
    this.transfer = undefined;
    this.frag = initialFragState;
  }

  /** lstatus for the transfer: pages of the current block's unknown fragments, or one lstatus when none is held. */
  private statusUps(flags: number): LoraUp[] {
    const t = this.transfer;
    if (!t) return [];
    const slot = this.frag.slots.find((s) => s.kind === 'receiving' && (s.setup.descriptor & 0xffff) === t.done && s.setup.descriptor >>> 16 === (t.id & 0xffff));
    if (!slot || slot.kind !== 'receiving' || heldIndices(slot).length === 0) return [{ type: 'status', transferId: t.id, done: t.done, flags: flags | StatusFlag.lastPage }];
    return statusPages(t.id, t.done, slot.decoder.missingCount, slot.decoder.unknownFragments(), flags);
  }

  private env(nowMs: number) {
    return {
      ramBudget: this.opts.ramBudget ?? 8192,
      lossTolerance: this.opts.lossTolerance ?? 0.1,
      random: this.opts.random,
      open: (s: FragSetup) => this.open(s, nowMs),
    };
  }

  private open(s: FragSetup, _nowMs: number): OpenResult {
    const t = this.transfer;
    const block = s.descriptor & 0xffff;
    if (!t || s.descriptor >>> 16 !== (t.id & 0xffff)) return { ok: false, why: 'wrongDescriptor', detail: `descriptor 0x${s.descriptor.toString(16)} names no transfer this node holds` };
    if (this.rejected.has(t.id)) return { ok: false, why: 'wrongDescriptor', detail: `transfer ${t.id} was rejected` };
    if (block !== t.done) return { ok: false, why: 'wrongDescriptor', detail: `block ${block} is not the next one (${t.done})` };
    const length = s.nbFrag * s.fragSize - s.padding;
    if (block === 0) {
      if (length > MANIFEST_BLOCK_MAX) return { ok: false, why: 'notEnoughMemory', detail: `manifest block of ${length} B exceeds ${MANIFEST_BLOCK_MAX} B` };
      const m = this.manifestSetup;
      if (!m || m.descriptor !== s.descriptor || m.nbFrag !== s.nbFrag || m.fragSize !== s.fragSize) this.manifestStore = memoryStore(s.nbFrag, s.fragSize);
      this.manifestSetup = s;
      return { ok: true, store: this.manifestStore, capacity: MANIFEST_BLOCK_MAX };
    }
    const base = (block - 1) * t.blockKiB * 1024;
    const expected = Math.min(t.blockKiB * 1024, t.size - base);
    if (block >= t.blocks || length !== expected) return { ok: false, why: 'wrongDescriptor', detail: `block ${block} is ${length} B, the offer makes it ${expected} B` };
    const slot = this.sys.imageArea(this.sys.inactiveSlot);
    const store = new SlotBlockStore(this.flash, slot, base, length, s.fragSize, this.erased);
    const saved = loadBlock(this.sys.nvs);
    const same = saved && saved.setup.descriptor === s.descriptor && saved.setup.nbFrag === s.nbFrag && saved.setup.fragSize === s.fragSize;
    if (same) store.markHeld(saved.known);
    return { ok: true, store, capacity: expected, heldIndices: same ? saved.known : [] };
  }

  private apply(effects: FragEffect[]): NodeUplink[] {
    const out: NodeUplink[] = [];
    for (const e of effects) {
      switch (e.kind) {
        case 'log':
          this.log(e.level, `${this.devEui}: ${e.msg}`);
          break;
        case 'uplink':
          out.push({ fPort: TS004_PORT, bytes: e.bytes, delayMs: e.delayMs });
          if (e.bytes[0] === 0x01) out.push(...this.statusUplinks(e.delayMs).filter((u) => this.hasUnknown(u)));
          break;
        case 'opened':
          if ((e.setup.descriptor & 0xffff) >= 1) this.persistBlock(e.setup.fragIndex);
          break;
        case 'stored':
          if ((this.frag.slots[e.fragIndex] as { setup?: FragSetup }).setup && ++this.sinceSave >= SAVE_EVERY) this.persistBlock(e.fragIndex);
          break;
        case 'complete':
          out.push(...this.blockDone(e.setup));
          break;
        case 'closed':
          break;
        case 'noSession':
          // The agent asks about a block this node is not receiving (it finished it off the group's stream, or
          // never got the setup): lstatus tells it which block the node is on.
          out.push(...this.statusUplinks(0));
          break;
      }
    }
    return out;
  }

  private statusUplinks(delayMs: number): NodeUplink[] {
    return this.statusUps(0).map((m) => ({ fPort: FERRY_LORA_PORT, bytes: encodeUp(m), delayMs }));
  }

  private hasUnknown(u: NodeUplink): boolean {
    return u.bytes.length > 0 && this.frag.slots.some((s) => s.kind === 'receiving' && s.decoder.missingCount > 0);
  }

  private persistBlock(fragIndex: number): void {
    const s = this.frag.slots[fragIndex];
    if (s.kind !== 'receiving' || (s.setup.descriptor & 0xffff) === 0) return;
    saveBlock(this.sys.nvs, s.setup, heldIndices(s));
    this.sinceSave = 0;
  }

  private blockDone(s: FragSetup): NodeUplink[] {
    const t = this.transfer;
    if (!t) return [];
    const block = s.descriptor & 0xffff;
    const report = (stage: number, reason: number): NodeUplink[] => [{ fPort: FERRY_LORA_PORT, bytes: encodeUp({ type: 'report', transferId: t.id, stage, reason }), delayMs: 0 }];
    if (block === 0) {
      const bytes = Buffer.from(this.manifestStore.bytes.subarray(0, s.nbFrag * s.fragSize - s.padding));
      const refusal = this.checkManifest(bytes, t);
      if (refusal) {
        this.log('warn', `${this.devEui}: manifest of transfer ${t.id} refused: ${refusal.detail}`);
        this.rejected.add(t.id);
        this.sys.recordRejection(t.version, refusal.reason);
        return report(Stage.rejected, refusal.reason);
      }
      t.manifest = bytes;
    }
    t.done = block + 1;
    this.sys.nvs.delete(NvsKey.loraBlock);
    if (t.done < t.blocks) {
      saveTransfer(this.sys.nvs, t);
      return [];
    }
    const m = verifyManifest(t.manifest!, this.opts.trust);
    const slot = this.sys.imageArea(this.sys.inactiveSlot);
    const digest = sha256(this.flash.read(slot.offset, t.size));
    if (!digest.equals(m.digest)) {
      this.log('warn', `${this.devEui}: image of transfer ${t.id} hashes to ${digest.toString('hex').slice(0, 16)}…, manifest says ${m.digest.toString('hex').slice(0, 16)}…`);
      this.dropTransfer();
      this.sys.recordRejection(m.version, Reason.invalidImage);
      return report(Stage.failed, Reason.invalidImage);
    }
    this.sys.installDescriptor({ size: m.size, securityVersion: m.securityVersion, digest, version: m.version, manifest: t.manifest });
    t.verified = true;
    saveTransfer(this.sys.nvs, t);
    return report(Stage.verified, Reason.none);
  }

  private checkManifest(bytes: Buffer, t: LoraTransfer): { reason: number; detail: string } | undefined {
    let m;
    try {
      m = verifyManifest(bytes, this.opts.trust);
    } catch (e) {
      return { reason: e instanceof ProtocolError ? e.reason : Reason.badSignature, detail: (e as Error).message };
    }
    const running = this.sys.running;
    if (m.hw !== this.opts.hw) return { reason: Reason.wrongHardware, detail: `release is for ${m.hw}, this node is ${this.opts.hw}` };
    if (compareVersions(m.version, running.version) <= 0) return { reason: Reason.downgrade, detail: `${m.version} is not newer than ${running.version}` };
    if (m.securityVersion < this.sys.counter.value) return { reason: Reason.securityDowngrade, detail: `security version ${m.securityVersion} < ${this.sys.counter.value}` };
    if (m.size > this.sys.imageCapacity) return { reason: Reason.noSpace, detail: `${m.size} B does not fit ${this.sys.imageCapacity} B` };
    if (!this.sys.profile.rollback && !(m.flags & ManifestFlag.allowNoRollback)) return { reason: Reason.noRollbackSupport, detail: 'no bootloader rollback and the release does not allow that' };
    if (m.size !== t.size || !m.digest.subarray(0, 4).equals(t.digestPrefix) || m.version.slice(0, 10) !== t.version) {
      return { reason: Reason.badField, detail: 'the offer does not match the manifest (size, digest or version)' };
    }
    return undefined;
  }
}
