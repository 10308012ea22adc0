import t, { type Test } from 'tap';
import { applyStoredDelta, applyStoredDeltaSync, type DeltaInput } from '../device/delta-install.js';
import { Flash, PowerCut, SECTOR_SIZE } from '../device/flash.js';
import { makeLayout } from '../device/layout.js';
import { payloadOffset } from '../device/transfer.js';
import { Arch, codecFor, type ArchName, type InstructionCodec } from '../shared/delta/arch/index.js';
import { applyPatch, PatchApplier } from '../shared/delta/apply.js';
import { deltaArchFor } from '../shared/delta/choose.js';
import { candidates, createPatchWithStats } from '../shared/delta/create.js';
import { detectImage } from '../shared/delta/detect.js';
import { crc32, readPatchHeader } from '../shared/delta/format.js';
import { ProtocolError, Reason } from '../shared/errors.js';
import { sha256 } from '../shared/manifest.js';
import { Capability, Encoding } from '../shared/messages.js';
import { firmware } from './helpers/fixtures.js';

/** Instruction and pointer prediction (delta format version 3): docs/delta.md, "Instruction prediction". */

const ESP = ['micropython-esp8266/esp8266-20180511-v1.9.4.bin', 'micropython-esp8266/esp8266-20190125-v1.10.bin'] as const;
const SMALL_PAIRS: [string, string][] = [
  ['foo/old', 'foo/new'],
  ['programmer/0.8.0.bin', 'programmer/0.9.0.bin'],
  ['shell/old', 'shell/new'],
  ['synthesizer/1.bin', 'synthesizer/2.bin'],
  ['synthesizer/1.bin', 'synthesizer/3.bin'],
];
const ARCHES: Exclude<ArchName, 'none'>[] = ['xtensa', 'thumb2', 'aarch64', 'riscv'];

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** The candidate that predicts instructions without pointers (the one every forced instruction set has). */
function instructionsOnly(oldImage: Buffer, newImage: Buffer, arch: ArchName): string {
  const c = candidates(oldImage, newImage, { arch }).find((k) => k.arch !== 0 && !k.name.endsWith('+ pointers'));
  if (!c) throw new Error(`no instruction candidate for ${arch}`);
  return c.name;
}

/**
 * One transform made alone and applied. Pinned to ferry's default matcher (the creator's second,
 * bsdiff-like matcher changes the steps, not the transform) to keep the file's run time down.
 */
function roundTrip(tt: Test, oldImage: Buffer, newImage: Buffer, opts: { arch: ArchName | 'auto'; only?: string; sparse?: boolean }, what: string): Buffer {
  const { patch, stats } = createPatchWithStats(oldImage, newImage, { match: {}, ...opts });
  const { image, result } = applyPatch(oldImage, patch, { pieceSize: 333 });
  tt.ok(image.equals(newImage), `${what}: ${stats.transform} rebuilds the new image (${patch.length} B)`);
  tt.ok(result.peakWorkingMemory <= 16384, `${what}: applies in ${result.peakWorkingMemory} B <= 16 KiB`);
  return patch;
}

t.test('every transform round-trips on every small pair, and on every pair with each instruction set forced', async (t) => {
  for (const [o, n] of SMALL_PAIRS) {
    const oldImage = firmware(o);
    const newImage = firmware(n);
    for (const c of candidates(oldImage, newImage, { arch: 'auto' })) roundTrip(t, oldImage, newImage, { arch: 'auto', only: c.name }, `${o} auto`);
    for (const arch of ARCHES) {
      for (const c of candidates(oldImage, newImage, { arch })) {
        if (c.arch !== 0) roundTrip(t, oldImage, newImage, { arch, only: c.name }, `${o} ${arch}`);
      }
    }
  }
});

t.test('the ESP8266 pair round-trips with every transform that applies to it', async (t) => {
  const oldImage = firmware(ESP[0]);
  const newImage = firmware(ESP[1]);
  // With the sparse diff stream allowed (what a node with capability 256 gets; the dense form is
  // made for the same transforms on the small pairs above).
  for (const c of candidates(oldImage, newImage, { arch: 'auto' })) roundTrip(t, oldImage, newImage, { arch: 'auto', only: c.name, sparse: true }, 'esp8266');
});

t.test('the creator keeps the smallest candidate: never larger than the plain patch, smaller on Cortex-M', async (t) => {
  for (const [o, n] of SMALL_PAIRS) {
    const oldImage = firmware(o);
    const newImage = firmware(n);
    const plain = createPatchWithStats(oldImage, newImage, { arch: 'none', pointerPrediction: false }).patch.length;
    const { patch, stats } = createPatchWithStats(oldImage, newImage, { arch: 'auto' });
    t.ok(patch.length <= plain, `${o}: auto ${patch.length} B (${stats.transform}) <= plain ${plain} B`);
    const header = readPatchHeader(patch);
    t.equal(header.version, stats.transform === 'none' || stats.transform === 'esp8266 pointers' ? 2 : 3, `${o}: header version matches ${stats.transform}`);
  }
  const shellOld = firmware('shell/old');
  const shellNew = firmware('shell/new');
  if (detectImage(shellNew).arch === 'thumb2') {
    const plain = createPatchWithStats(shellOld, shellNew, { arch: 'none' }).patch.length;
    const thumb = createPatchWithStats(shellOld, shellNew, { arch: 'thumb2' });
    t.ok(thumb.patch.length < plain * 0.7, `shell: thumb2 ${thumb.patch.length} B well under plain ${plain} B`);
    t.equal(readPatchHeader(thumb.patch).arch, Arch.thumb2);
  }
});

/** Template instructions that call/branch (re-aimed with the codec) and filler words that are no reference. */
const SYNTH: Record<Exclude<ArchName, 'none'>, { call: number; length: number; align: number; filler: number[] }> = {
  aarch64: { call: 0x94000000, length: 4, align: 4, filler: [0xd503201f, 0xaa0103e0, 0x8b020020, 0xf9400000, 0xd65f03c0, 0xa9bf7bfd] },
  riscv: { call: 0x000000ef, length: 4, align: 4, filler: [0x00000013, 0x00a50533, 0x00052503, 0x00008067, 0xff010113, 0x00112623] },
  thumb2: { call: 0xf800f000, length: 4, align: 4, filler: [0xbf00bf00, 0x46084601, 0x68004770, 0x1c401840, 0xb5104620, 0xbd102000] },
  // 3-byte slots: the predictor walks Xtensa code instruction by instruction.
  xtensa: { call: 0x000005, length: 3, align: 3, filler: [0x0020f0, 0x0c0202, 0x1b2282, 0x20a0a2, 0xf01d00, 0x0d2022] },
};

/**
 * Code with calls between 200 "functions"; the new image inserts a block in the middle, so every
 * call across it changes its offset while the called code is byte-identical.
 */
function synthetic(arch: Exclude<ArchName, 'none'>, seed: number): { oldImage: Buffer; newImage: Buffer } {
  const spec = SYNTH[arch];
  const codec = codecFor(Arch[arch])!;
  const rand = rng(seed);
  const fnCount = 200;
  // A multiple of 4 slots per function keeps every function start 4-byte aligned (CALL0 targets are).
  const fnSlots = Array.from({ length: fnCount }, () => 4 * (2 + Math.floor(rand() * 10)));
  const body = fnSlots.map((slots) => Array.from({ length: slots }, () => (rand() < 0.2 ? -1 - Math.floor(rand() * fnCount) : spec.filler[Math.floor(rand() * spec.filler.length)])));
  const build = (insertAt: number, insert: number): Buffer => {
    const starts: number[] = [];
    let pos = 0;
    for (let f = 0; f < fnCount; f++) {
      if (f === insertAt) pos += insert;
      starts.push(pos);
      pos += fnSlots[f] * spec.align;
    }
    const out = Buffer.alloc(pos);
    for (let f = 0; f < fnCount; f++) {
      if (f === insertAt) for (let k = 0; k < insert; k++) out[starts[f] - insert + k] = (k * 7) & 0xff;
      body[f].forEach((w, i) => {
        const at = starts[f] + i * spec.align;
        const word = w < 0 ? codec.encode(spec.call, at, starts[-1 - w]) : w;
        if (word === undefined) throw new Error(`synthetic ${arch}: call out of range`);
        for (let k = 0; k < spec.length; k++) out[at + k] = (word >>> (8 * k)) & 0xff;
      });
    }
    return out;
  };
  return { oldImage: build(-1, 0), newImage: build(fnCount / 2, 64) };
}

t.test('each instruction set pays on code whose calls moved, and round-trips', async (t) => {
  for (const arch of ARCHES) {
    const { oldImage, newImage } = synthetic(arch, 7);
    const plain = createPatchWithStats(oldImage, newImage, { arch: 'none', pointerPrediction: false }).patch;
    const predicted = roundTrip(t, oldImage, newImage, { arch, only: instructionsOnly(oldImage, newImage, arch) }, `synthetic ${arch}`);
    t.ok(predicted.length < plain.length * 0.8, `synthetic ${arch}: ${predicted.length} B with prediction < 80 % of plain ${plain.length} B`);
  }
});

/** Every codec on random words: decode/encode never throw, stay in their width, and invert each other. */
t.test('codecs: random words and targets never crash, stay inside the instruction, and re-encode exactly', async (t) => {
  for (const arch of ARCHES) {
    const codec: InstructionCodec = codecFor(Arch[arch])!;
    const rand = rng(Arch[arch] * 101);
    let refs = 0;
    let bad = 0;
    for (let i = 0; i < 200_000; i++) {
      const w = Math.floor(rand() * 2 ** 32) >>> 0;
      const at = Math.floor(rand() * 2 ** 32) & ~(codec.align - 1);
      const avail = 1 + Math.floor(rand() * 4);
      const masked = avail === 4 ? w : w & ((1 << (8 * avail)) - 1);
      const ref = codec.decode(masked, avail, at >>> 0);
      if (!ref) continue;
      refs++;
      const mask = ref.length === 4 ? 0xffffffff : (1 << (8 * ref.length)) - 1;
      if (ref.length > avail || ref.target !== ref.target >>> 0) bad++;
      const self = codec.encode(masked & mask, at >>> 0, ref.target);
      if (ref.exact && (self === undefined || self >>> 0 !== (masked & mask) >>> 0)) bad++;
      const target = Math.floor(rand() * 2 ** 32) >>> 0;
      const moved = codec.encode(masked & mask, (at + 64) >>> 0, target);
      if (moved !== undefined) {
        if (moved < 0 || moved > mask) bad++;
        const back = codec.decode(moved, ref.length, (at + 64) >>> 0);
        if (!back || (ref.exact && back.target !== target)) bad++;
      }
    }
    t.ok(refs > 500, `${arch}: ${refs} references among random words`);
    t.equal(bad, 0, `${arch}: every reference decodes inside its bytes and re-encodes exactly`);
  }
});

function expectRefusal(tt: Test, fn: () => unknown, what: string): void {
  try {
    fn();
    tt.fail(`${what}: expected a refusal`);
  } catch (err) {
    tt.ok(err instanceof ProtocolError, `${what}: refused with a ProtocolError (${(err as Error).message})`);
  }
}

/** A v3 header with fields changed, the CRC recomputed so the field checks are what refuses it. */
function withHeader(patch: Buffer, edit: (h: Buffer) => void): Buffer {
  const out = Buffer.from(patch);
  const size = readPatchHeader(patch).headerSize;
  edit(out);
  out.writeUInt32LE(crc32(out.subarray(0, size - 4)), size - 4);
  return out;
}

t.test('version 3 headers: inconsistent or unknown fields are refused with a clear error', async (t) => {
  const oldImage = firmware('shell/old');
  const newImage = firmware('shell/new');
  const patch = createPatchWithStats(oldImage, newImage, { arch: 'thumb2', only: instructionsOnly(oldImage, newImage, 'thumb2') }).patch;
  t.equal(readPatchHeader(patch).version, 3);
  const cases: [string, (h: Buffer) => void, RegExp][] = [
    ['unknown instruction set', (h) => (h[11] = 9), /instruction set 9/],
    ['instruction set without its flag', (h) => (h[6] &= ~4), /does not agree/],
    ['unknown transform bit', (h) => (h[6] |= 16), /unknown delta transform flags/],
    ['pointer range without its flag', (h) => h.writeUInt32LE(0x1000, 92), /pointer range/],
    ['pointer range flag without a range', (h) => (h[6] |= 2), /pointer range/],
    ['no forms for an instruction set', (h) => (h[96] = 0), /form mask/],
    ['a form the instruction set lacks', (h) => (h[96] = 0x08), /form mask/],
    ['unknown fallback bit', (h) => (h[97] = 4), /fallback/],
    ['reserved byte 98', (h) => (h[98] = 1), /reserved/],
  ];
  for (const [what, edit, pattern] of cases) {
    const bad = withHeader(patch, edit);
    try {
      readPatchHeader(bad);
      t.fail(`${what}: accepted`);
    } catch (err) {
      t.ok(err instanceof ProtocolError && err.reason === Reason.malformed, `${what}: malformed`);
      t.match((err as Error).message, pattern, `${what}: the message names it`);
    }
    expectRefusal(t, () => applyPatch(oldImage, bad), `${what} (apply)`);
  }
  // A version 2 applier's rule still holds for version 2 patches: byte 11 is reserved.
  const v2 = createPatchWithStats(oldImage, newImage, { arch: 'none' }).patch;
  const v2bad = Buffer.from(v2);
  v2bad[11] = 2;
  v2bad.writeUInt32LE(crc32(v2bad.subarray(0, 84)), 84);
  expectRefusal(t, () => readPatchHeader(v2bad), 'v2 header with an instruction set');
});

/**
 * Corrupted and random patch bodies behind a valid version 3 header: the applier refuses them with
 * a ProtocolError, never reads outside the base, and never writes past the declared size.
 */
t.test('adversarial bodies under every instruction set: clear refusals, reads and writes in bounds', async (t) => {
  const oldImage = firmware('programmer/0.8.0.bin');
  const newImage = firmware('programmer/0.9.0.bin');
  const rand = rng(42);
  for (const arch of ARCHES) {
    const patch = createPatchWithStats(oldImage, newImage, { arch, only: instructionsOnly(oldImage, newImage, arch) }).patch;
    const header = readPatchHeader(patch);
    let crashes = 0;
    let outOfBounds = 0;
    let refused = 0;
    for (let trial = 0; trial < 60; trial++) {
      const bad = Buffer.from(patch);
      if (trial % 3 === 0) for (let k = header.headerSize; k < bad.length; k++) bad[k] = Math.floor(rand() * 256);
      else for (let k = 0; k < 1 + (trial % 7); k++) bad[header.headerSize + Math.floor(rand() * (bad.length - header.headerSize))] ^= 1 << Math.floor(rand() * 8);
      let written = 0;
      const applier = new PatchApplier({
        readOld: (o, l) => {
          if (o < 0 || l < 0 || o + l > oldImage.length) outOfBounds++;
          return oldImage.subarray(o, o + l);
        },
        write: (b) => {
          written += b.length;
          if (written > header.newSize) outOfBounds++;
        },
      });
      try {
        applier.push(bad);
        applier.finish();
      } catch (err) {
        if (err instanceof ProtocolError) refused++;
        else crashes++;
      }
    }
    t.equal(crashes, 0, `${arch}: no crash (${refused} of 60 refused with a ProtocolError)`);
    t.equal(outOfBounds, 0, `${arch}: no read outside the base, no write past the new size`);
  }
});

t.test('deltaArchFor: the node gets the instruction set of the image only if it announces it', async (t) => {
  const shell = firmware('shell/new');
  const isThumb = detectImage(shell).arch === 'thumb2';
  t.equal(deltaArchFor(Capability.delta, shell), 'none', 'capability 1 only: version 2');
  t.equal(deltaArchFor(Capability.delta | Capability.deltaThumb2, shell), isThumb ? 'thumb2' : 'none', 'thumb2 node, thumb2 image');
  t.equal(deltaArchFor(Capability.delta | Capability.deltaAarch64, shell), 'none', 'aarch64 node, thumb2 image: plain');
  t.equal(deltaArchFor(Capability.deltaThumb2, shell), 'none', 'no delta capability at all: none');
  t.equal(deltaArchFor(Capability.delta | Capability.deltaXtensa, firmware('foo/new')), 'none', 'unrecognised image: none');
});

t.test('detectImage recognises ESP, ELF, Cortex-M and arm64 images and falls back to none', async (t) => {
  const elf = Buffer.alloc(64);
  elf.set([0x7f, 0x45, 0x4c, 0x46, 1, 1, 1], 0);
  for (const [machine, arch] of [[94, 'xtensa'], [40, 'thumb2'], [183, 'aarch64'], [243, 'riscv'], [3, 'none']] as const) {
    elf.writeUInt16LE(machine, 18);
    t.equal(detectImage(elf).arch, arch, `ELF e_machine ${machine}: ${arch}`);
  }
  const esp32 = Buffer.alloc(64);
  esp32.set([0xe9, 4, 2, 0x20], 0);
  esp32.writeUInt32LE(0x40081000, 4);
  t.equal(detectImage(esp32).arch, 'xtensa', 'ESP32 image header (chip 0)');
  esp32.writeUInt16LE(5, 12);
  t.equal(detectImage(esp32).arch, 'riscv', 'ESP32-C3 image header (chip 5)');
  const arm64 = Buffer.alloc(128);
  arm64.write('ARM\x64', 0x38, 'latin1');
  t.equal(detectImage(arm64).arch, 'aarch64', 'arm64 Image header');
  const stm32 = Buffer.alloc(256);
  stm32.writeUInt32LE(0x20005000, 0);
  for (let i = 1; i < 16; i++) stm32.writeUInt32LE(0x08000101 + i * 8, i * 4);
  const cm = detectImage(stm32);
  t.equal(cm.arch, 'thumb2', 'Cortex-M vector table: thumb2');
  t.equal(cm.loadAddress, 0x08000000, 'flash base from the handlers');
  t.same(cm.pointerRange, [0x08000000, 0x08010000], 'pointer range: the image, rounded up to 64 KiB');
  stm32.writeUInt32LE(0x08000100, 4);
  t.equal(detectImage(stm32).arch, 'none', 'an even (non-Thumb) reset vector is not a Cortex-M table');
  t.equal(detectImage(Buffer.alloc(4096)).arch, 'none', 'zeros: none');
  t.equal(detectImage(Buffer.alloc(3)).arch, 'none', 'three bytes: none');
});

t.test('a power cut during a transformed delta apply leaves the base intact; the re-run converges', async (t) => {
  const OLD = firmware('shell/old');
  const NEW = firmware('shell/new');
  const PATCH = createPatchWithStats(OLD, NEW, { arch: 'thumb2' }).patch;
  t.equal(readPatchHeader(PATCH).version, detectImage(NEW).arch === 'thumb2' ? 3 : 2, 'the patch uses the transform when the image is Cortex-M');
  const layout = makeLayout(512 * 1024);
  const [RUN, TARGET] = layout.slots;
  const sectors = (n: number) => Math.ceil(n / SECTOR_SIZE) * SECTOR_SIZE;
  for (const at of [1, 5, 17, 33, 60]) {
    for (const mode of ['torn', 'before'] as const) {
      const flash = new Flash(layout.flashSize);
      flash.erase(RUN.offset, sectors(OLD.length));
      flash.write(RUN.offset, OLD);
      const off = payloadOffset(Encoding.delta, TARGET.size, PATCH.length);
      flash.erase(TARGET.offset + off, TARGET.size - off);
      flash.write(TARGET.offset + off, PATCH);
      const input: DeltaInput = { flash, running: RUN, runningSize: OLD.length, target: TARGET, patchOffset: off, patchSize: PATCH.length, baseDigest: sha256(OLD), expectedSize: NEW.length };
      flash.armPowerCut({ at, mode, fraction: 0.5 });
      let cut = false;
      try {
        applyStoredDeltaSync(input);
      } catch (err) {
        if (!(err instanceof PowerCut)) throw err;
        cut = true;
      }
      t.ok(cut, `cut at flash op #${at} (${mode}) happened`);
      const again = await applyStoredDelta(input);
      t.ok(again.digest.equals(sha256(NEW)), `after the cut at #${at} (${mode}) the re-run yields the new image`);
      t.ok(flash.read(RUN.offset, OLD.length).equals(OLD), 'running image untouched');
    }
  }
});
