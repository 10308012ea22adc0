import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { inflateRawSync } from 'node:zlib';
import { ProtocolError, Reason } from '../shared/errors.js';
import { sha256 } from '../shared/manifest.js';
import { applyPatch, createPatch, HEADER_SIZE, PatchApplier, readPatchHeader } from '../shared/delta/index.js';
import { suffixArray } from '../shared/delta/suffix-array.js';
import { NEED_INPUT, RawInflater, STREAM_END } from '../shared/delta/inflate.js';
import { firmware, firmwareFile } from './helpers/fixtures.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const PAIRS: [string, string][] = [
  ['foo/old', 'foo/new'],
  ['programmer/0.8.0.bin', 'programmer/0.9.0.bin'],
  ['shell/old', 'shell/new'],
  ['synthesizer/1.bin', 'synthesizer/2.bin'],
  ['synthesizer/1.bin', 'synthesizer/3.bin'],
  ['micropython-esp8266/esp8266-20180511-v1.9.4.bin', 'micropython-esp8266/esp8266-20190125-v1.10.bin'],
];

/** Deterministic PRNG so failures reproduce. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** Feeds the patch in random piece sizes (1 byte up to 3 KiB) and returns the written image. */
function applyInRandomPieces(oldImage: Buffer, patch: Buffer, seed: number): { image: Buffer; peak: number } {
  const rand = rng(seed);
  const parts: Uint8Array[] = [];
  const applier = new PatchApplier({ readOld: (o, l) => oldImage.subarray(o, o + l), write: (b) => parts.push(b) });
  let pos = 0;
  while (pos < patch.length) {
    const n = rand() < 0.2 ? 1 + Math.floor(rand() * 8) : 1 + Math.floor(rand() * 3072);
    applier.push(patch.subarray(pos, pos + n));
    pos += n;
  }
  const result = applier.finish();
  return { image: Buffer.concat(parts), peak: result.peakWorkingMemory };
}

function expectProtocolError(tt: Test, fn: () => unknown, reason: number, pattern: RegExp, what: string): void {
  try {
    fn();
    tt.fail(`${what}: expected an error`);
  } catch (err) {
    tt.ok(err instanceof ProtocolError, `${what}: a ProtocolError (${(err as Error).message})`);
    tt.equal((err as ProtocolError).reason, reason, `${what}: reason ${reason}`);
    tt.match((err as Error).message, pattern, `${what}: message names the problem`);
  }
}

t.test('suffix array sorts suffixes', async (tt) => {
  for (const text of ['banana', 'mississippi', 'aaaaaaaa', 'abracadabra', '']) {
    const bytes = Buffer.from(text);
    const naive = [...bytes.keys()].sort((a, b) => Buffer.compare(bytes.subarray(a), bytes.subarray(b)));
    tt.same([...suffixArray(bytes)], naive, JSON.stringify(text));
  }
  const rand = rng(7);
  const bytes = Buffer.from(Array.from({ length: 3000 }, () => Math.floor(rand() * 3)));
  const naive = [...bytes.keys()].sort((a, b) => Buffer.compare(bytes.subarray(a), bytes.subarray(b)));
  tt.same([...suffixArray(bytes)], naive, 'random 3-letter text');
});

for (const [oldRel, newRel] of PAIRS) {
  t.test(`round trip ${oldRel} -> ${newRel}`, async (tt) => {
    const oldImage = firmware(oldRel);
    const newImage = firmware(newRel);
    const patch = createPatch(oldImage, newImage);
    tt.ok(patch.length < newImage.length, `patch ${patch.length} B smaller than the ${newImage.length} B image`);
    const header = readPatchHeader(patch);
    tt.equal(header.baseSize, oldImage.length);
    tt.equal(header.newSize, newImage.length);
    tt.ok(header.baseDigest.equals(sha256(oldImage)), 'header names the base digest');
    tt.ok(header.newDigest.equals(sha256(newImage)), 'header names the new digest');
    const oldCopy = Buffer.from(oldImage);
    for (const seed of [1, 2]) {
      const { image, peak } = applyInRandomPieces(oldImage, patch, seed);
      tt.ok(image.equals(newImage), `random pieces (seed ${seed}) rebuild the new image`);
      tt.ok(peak <= 16384, `peak working memory ${peak} B <= 16 KiB`);
    }
    tt.ok(oldImage.equals(oldCopy), 'old image untouched');
  });
}

/** Splits a patch body into its three streams' compressed bytes (docs/delta.md, "Frames"). */
function demultiplex(patch: Buffer): { streams: Buffer[]; frames: { stream: number; length: number }[] } {
  const parts: Buffer[][] = [[], [], []];
  const frames: { stream: number; length: number }[] = [];
  let i = HEADER_SIZE;
  while (i < patch.length) {
    let head = 0;
    let shift = 0;
    for (;;) {
      const b = patch[i++];
      head += (b & 0x7f) * 2 ** shift;
      shift += 7;
      if (!(b & 0x80)) break;
    }
    const stream = head & 3;
    const length = (head >>> 2) + 1;
    parts[stream].push(patch.subarray(i, i + length));
    frames.push({ stream, length });
    i += length;
  }
  return { streams: parts.map((p) => Buffer.concat(p)), frames };
}

t.test('each stream is plain raw DEFLATE within its declared window (zlib as a stand-in for uzlib)', async (tt) => {
  const [oldRel, newRel] = PAIRS[PAIRS.length - 1]; // the ESP8266 pair: pointer prediction matters there
  const oldImage = firmware(oldRel);
  const newImage = firmware(newRel);
  const patch = createPatch(oldImage, newImage);
  const header = readPatchHeader(patch);
  tt.equal(header.version, 2);
  const { streams, frames } = demultiplex(patch);
  tt.ok(frames.every((f) => f.stream < 3 && f.length <= 1 << header.bufferBits), `${frames.length} frames, each for a known stream and within the ${1 << header.bufferBits}-byte buffer`);
  let total = 0;
  streams.forEach((compressed, s) => {
    // zlib refuses a distance beyond its window: decoding with the declared window bits proves the bound.
    const raw = inflateRawSync(compressed, { windowBits: header.streamWindowBits[s] });
    tt.ok(raw.length > 0, `stream ${s}: ${compressed.length} B -> ${raw.length} B with window 2^${header.streamWindowBits[s]}`);
    total += s === 0 ? 0 : raw.length;
  });
  tt.equal(total, newImage.length, 'diff + extra bytes add up to the new image');

  // A pull-style applier (as on MicroPython): a decoder that runs dry reads the next frame, which
  // must be its own. Walk the control stream's steps and pull every byte in the applier's order.
  const control = inflateRawSync(streams[0], { windowBits: header.streamWindowBits[0] });
  const decoders = header.streamWindowBits.map((w) => new RawInflater(w, 1 << header.bufferBits));
  let next = 0;
  let body = HEADER_SIZE;
  let misordered = 0;
  const pull = (s: number): number => {
    for (;;) {
      const b = decoders[s].pull();
      if (b !== NEED_INPUT) return b;
      const f = frames[next++];
      if (!f || f.stream !== s) misordered++;
      if (!f) return STREAM_END;
      let head = (f.length - 1) * 4 + f.stream;
      while (head >= 0x80) {
        head = Math.floor(head / 0x80);
        body++;
      }
      body++;
      decoders[f.stream].feed(patch.subarray(body, body + f.length));
      body += f.length;
    }
  };
  let c = 0;
  let controlMismatch = 0;
  const uvarint = (): number => {
    let v = 0;
    let shift = 0;
    for (;;) {
      const b = pull(0);
      if (b !== control[c++]) controlMismatch++;
      v += (b & 0x7f) * 2 ** shift;
      shift += 7;
      if (!(b & 0x80)) return v;
    }
  };
  // ...and rebuild the image by docs/delta.md's "Instructions" alone (not PatchApplier's code).
  const out = Buffer.alloc(header.newSize);
  let newPos = 0;
  let oldPos = 0;
  const recent = [0, 0, 0, 0];
  const pageDelta = new Int32Array(256);
  const u32 = (b: Buffer, at: number): number => (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0;
  const pointerLike = (o: number): boolean => o >>> 20 === 0x402 || [0x3ffe, 0x3fff, 0x4010].includes(o >>> 16);
  while (c < control.length) {
    const copyLen = uvarint();
    for (let i = 0; i < copyLen; ) {
      if (header.transforms & 1 && newPos % 4 === 0 && copyLen - i >= 4 && pointerLike(u32(oldImage, oldPos + i))) {
        const o = u32(oldImage, oldPos + i);
        const slot = (o >>> 11) & 255;
        const P = (o + pageDelta[slot]) >>> 0;
        for (let k = 0; k < 4; k++) out[newPos + k] = (pull(1) + ((P >>> (8 * k)) & 0xff)) & 0xff;
        pageDelta[slot] = (u32(out, newPos) - o) | 0;
        newPos += 4;
        i += 4;
      } else {
        out[newPos++] = (pull(1) + oldImage[oldPos + i]) & 0xff;
        i++;
      }
    }
    oldPos += copyLen;
    const extraLen = uvarint();
    for (let k = 0; k < extraLen; k++) out[newPos++] = pull(2);
    oldPos += extraLen;
    const jump = uvarint();
    const z = Math.floor(jump / 4);
    const a = recent[jump % 4] + (z % 2 ? -(z + 1) / 2 : z / 2);
    oldPos = newPos + a;
    recent.unshift(a);
    recent.length = 4;
  }
  for (const s of [0, 1, 2]) tt.equal(pull(s), STREAM_END, `stream ${s} ends where the steps do`);
  tt.ok(out.equals(newImage), 'an applier written from the document alone rebuilds the new image');
  tt.equal(controlMismatch, 0, 'our decoder and zlib agree on the control stream');
  tt.equal(misordered, 0, 'every frame arrives when its stream runs dry, never earlier or later');
  tt.equal(next, frames.length, 'all frames used');
});

t.test('identical, empty and unrelated images', async (tt) => {
  const rand = rng(3);
  const a = Buffer.from(Array.from({ length: 20000 }, () => Math.floor(rand() * 256)));
  const b = randomBytes(5000);
  const cases: [string, Buffer, Buffer][] = [
    ['identical', a, Buffer.from(a)],
    ['empty old', Buffer.alloc(0), b],
    ['empty new', a, Buffer.alloc(0)],
    ['both empty', Buffer.alloc(0), Buffer.alloc(0)],
    ['unrelated', a, b],
    ['one byte', Buffer.from([1]), Buffer.from([2])],
    ['all 0xFF', Buffer.alloc(4096, 0xff), Buffer.alloc(8192, 0xff)],
  ];
  for (const [name, oldImage, newImage] of cases) {
    const patch = createPatch(oldImage, newImage);
    const { image, peak } = applyInRandomPieces(oldImage, patch, 9);
    tt.ok(image.equals(newImage), `${name}: round trip`);
    tt.ok(peak <= 16384, `${name}: peak ${peak} B`);
    if (name === 'identical') tt.ok(patch.length < 200, `identical images give a tiny patch (${patch.length} B)`);
  }
});

t.test('bad input is rejected with a clear error', async (tt) => {
  const oldImage = firmware('programmer/0.8.0.bin');
  const newImage = firmware('programmer/0.9.0.bin');
  const patch = createPatch(oldImage, newImage);
  const oldCopy = Buffer.from(oldImage);

  expectProtocolError(tt, () => applyPatch(newImage, patch), Reason.deltaBaseMismatch, /wrong base image/, 'wrong base (checked from the header)');
  expectProtocolError(
    tt,
    () => new PatchApplier({ readOld: () => new Uint8Array(0), write: () => {}, expectBaseDigest: sha256(newImage) }).push(patch),
    Reason.deltaBaseMismatch,
    /patch is for base image/,
    'applier told the running digest',
  );
  // Same size, wrong content, base check skipped: the final digest catches it.
  const other = Buffer.from(oldImage);
  for (let i = 0; i < other.length; i += 97) other[i] ^= 0x5a;
  expectProtocolError(
    tt,
    () => {
      const a = new PatchApplier({ readOld: (o, l) => other.subarray(o, o + l), write: () => {} });
      a.push(patch);
      a.finish();
    },
    Reason.deltaFailed,
    /digest/,
    'wrong base not checked up front',
  );

  for (const cut of [10, HEADER_SIZE, HEADER_SIZE + 5, Math.floor(patch.length / 2), patch.length - 1]) {
    expectProtocolError(tt, () => applyPatch(oldImage, patch.subarray(0, cut)), cut < HEADER_SIZE ? Reason.malformed : Reason.deltaFailed, /truncated/, `truncated at ${cut}`);
  }
  expectProtocolError(tt, () => applyPatch(oldImage, Buffer.concat([patch, Buffer.from([0])])), Reason.deltaFailed, /after the end/, 'trailing garbage');

  const badMagic = Buffer.from(patch);
  badMagic[0] ^= 1;
  expectProtocolError(tt, () => readPatchHeader(badMagic), Reason.malformed, /not a ferry delta patch/, 'bad magic');
  const badVersion = Buffer.from(patch);
  badVersion[4] = 9;
  expectProtocolError(tt, () => readPatchHeader(badVersion), Reason.malformed, /unknown delta format version 9/, 'unknown version');
  const badHeader = Buffer.from(patch);
  badHeader[20] ^= 1;
  expectProtocolError(tt, () => readPatchHeader(badHeader), Reason.malformed, /CRC-32/, 'header corruption');

  // Body corruption: every flipped byte must end in a ProtocolError, never a crash or a wrong image.
  // A flip can be harmless (say, a match distance into a run of equal bytes still decodes the same
  // output); then the image must still be exactly right, which the final digest check guarantees.
  const rand = rng(11);
  let caught = 0;
  let harmless = 0;
  for (let k = 0; k < 60; k++) {
    const bad = Buffer.from(patch);
    const at = HEADER_SIZE + Math.floor(rand() * (patch.length - HEADER_SIZE));
    bad[at] ^= 1 + Math.floor(rand() * 255);
    try {
      const { image } = applyPatch(oldImage, bad, { pieceSize: 100 });
      if (image.equals(newImage)) harmless++;
      else tt.fail(`corruption at ${at} produced a wrong image without an error`);
    } catch (err) {
      if (!(err instanceof ProtocolError)) tt.fail(`corruption at ${at}: ${(err as Error).stack}`);
      else caught++;
    }
  }
  tt.equal(caught + harmless, 60, `60 corrupted patches: ${caught} rejected with ProtocolError, ${harmless} decoded to the right image anyway`);
  tt.ok(caught >= 50, 'nearly all corruptions are rejected');

  // A patch that would write past the declared size: declare a shorter new image (and fix the CRC).
  const shortPatch = createPatch(oldImage, newImage.subarray(0, 1000));
  const longBody = Buffer.concat([shortPatch.subarray(0, HEADER_SIZE), patch.subarray(HEADER_SIZE)]);
  expectProtocolError(tt, () => {
    const a = new PatchApplier({ readOld: (o, l) => oldImage.subarray(o, o + l), write: () => {} });
    a.push(longBody);
    a.finish();
  }, Reason.oversize, /longer than declared/, 'output longer than declared');

  const failed = new PatchApplier({ readOld: (o, l) => oldImage.subarray(o, o + l), write: () => {} });
  tt.throws(() => failed.push(badMagic), 'bad patch fails');
  tt.throws(() => failed.push(patch), 'and keeps failing');
  tt.ok(oldImage.equals(oldCopy), 'old image untouched by every failure');
});

t.test('CLI diff -> patch round trip', async (tt) => {
  const bin = path.join(repo, 'dist/bin/ferry.js');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-delta-cli-'));
  tt.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const oldFile = firmwareFile('shell/old');
  const newFile = firmwareFile('shell/new');
  const patchFile = path.join(dir, 'p.fryd');
  const outFile = path.join(dir, 'out.bin');
  const run = (args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });

  const d = run(['diff', oldFile, newFile, '-o', patchFile, '--json']);
  tt.equal(d.status, 0, `diff exits 0 (${d.stderr})`);
  const ds = JSON.parse(d.stdout);
  tt.equal(ds.patchBytes, fs.statSync(patchFile).size, 'diff summary names the patch size');
  tt.ok(ds.peakApplyMemory <= 16384, 'diff summary names apply memory');

  const p = run(['patch', oldFile, patchFile, '-o', outFile, '--json']);
  tt.equal(p.status, 0, `patch exits 0 (${p.stderr})`);
  tt.ok(fs.readFileSync(outFile).equals(fs.readFileSync(newFile)), 'patched file equals the new image');
  tt.equal(JSON.parse(p.stdout).outBytes, fs.statSync(newFile).size);

  const wrong = run(['patch', newFile, patchFile, '-o', path.join(dir, 'wrong.bin')]);
  tt.not(wrong.status, 0, 'wrong base fails');
  tt.match(wrong.stderr, /wrong base image/);
  tt.notOk(fs.existsSync(path.join(dir, 'wrong.bin')), 'no output file on failure');

  const truncated = path.join(dir, 'cut.fryd');
  fs.writeFileSync(truncated, fs.readFileSync(patchFile).subarray(0, Math.floor(fs.statSync(patchFile).size / 2)));
  const cut = run(['patch', oldFile, truncated, '-o', path.join(dir, 'cut.bin')]);
  tt.not(cut.status, 0, 'truncated patch fails');
  tt.match(cut.stderr, /truncated/);
  tt.notOk(fs.existsSync(path.join(dir, 'cut.bin')), 'no half-written output');
  tt.same(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp')), [], 'temp files cleaned up');

  const flags = run(['diff', oldFile, newFile, '-o', patchFile, '--window-bits', '20']);
  tt.not(flags.status, 0, 'bad --window-bits fails');
  tt.match(flags.stderr, /--window-bits/);
  const overwrite = run(['patch', oldFile, patchFile, '-o', oldFile]);
  tt.not(overwrite.status, 0, 'refuses to write over OLD');
});
