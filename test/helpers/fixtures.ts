import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Firmware image pairs for delta tests. The real pairs live beside the checkout in
 * ../shared/fixtures/firmware (third-party test data, so they are not committed here). A clean
 * clone elsewhere, such as CI's, may not have them: then each file is replaced by a deterministic
 * synthetic image of the same size with firmware-like structure (instruction-like tokens, absolute
 * pointers, string tables), and each "new" image is its pair's "old" one edited the way a rebuild
 * edits firmware (inserted and deleted code, relocated pointers, scattered byte changes). Tests
 * assert structure (round trips, memory bounds, fallbacks), never sizes of the real pairs, so they
 * hold on either.
 */
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const candidates = [process.env.FERRY_FIXTURES, path.resolve(repo, '../shared/fixtures/firmware')].filter((d): d is string => Boolean(d));

/** Where the real pairs are, or undefined when this checkout has none. */
export const fixturesDir: string | undefined = candidates.find((d) => fs.existsSync(path.join(d, 'foo/old')));

/** Every file the tests use: its size, and the pair base it is derived from (absent for a base). */
const FILES: Record<string, { size: number; base?: string }> = {
  'foo/old': { size: 2780 },
  'foo/new': { size: 2780, base: 'foo/old' },
  'programmer/0.8.0.bin': { size: 23504 },
  'programmer/0.9.0.bin': { size: 23504, base: 'programmer/0.8.0.bin' },
  'shell/old': { size: 141800 },
  'shell/new': { size: 141800, base: 'shell/old' },
  'synthesizer/1.bin': { size: 159208 },
  'synthesizer/2.bin': { size: 159208, base: 'synthesizer/1.bin' },
  'synthesizer/3.bin': { size: 159208, base: 'synthesizer/1.bin' },
  'micropython-esp8266/esp8266-20180511-v1.9.4.bin': { size: 604872 },
  'micropython-esp8266/esp8266-20190125-v1.10.bin': { size: 615388, base: 'micropython-esp8266/esp8266-20180511-v1.9.4.bin' },
};

const cache = new Map<string, Buffer>();

/** The image at `rel` (a path under fixtures/firmware): the real file, or its synthetic stand-in. */
export function firmware(rel: string): Buffer {
  if (fixturesDir) return fs.readFileSync(path.join(fixturesDir, rel));
  let image = cache.get(rel);
  if (!image) {
    const spec = FILES[rel];
    if (!spec) throw new Error(`no synthetic stand-in for fixture ${rel}`);
    image = spec.base ? rebuild(firmware(spec.base), seedOf(rel), spec.size) : synthesize(seedOf(rel), spec.size);
    cache.set(rel, image);
  }
  return image;
}

/** A file path holding firmware(rel), for commands that take files. */
export function firmwareFile(rel: string): string {
  if (fixturesDir) return path.join(fixturesDir, rel);
  const file = path.join(os.tmpdir(), `ferry-fixture-${process.pid}-${rel.replace(/[/\\]/g, '_')}`);
  if (!fs.existsSync(file)) fs.writeFileSync(file, firmware(rel));
  return file;
}

export const fixtureSource = fixturesDir ? `real images from ${fixturesDir}` : 'synthetic stand-ins (../shared/fixtures/firmware not found)';

function seedOf(text: string): number {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619);
  return h >>> 0;
}

function rng(seed: number): () => number {
  let s = seed || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
}

const LOAD_ADDRESS = 0x40200000;
const WORDS = ['flash', 'error', 'timeout', 'socket', 'buffer', 'config', 'update', 'partition', 'invalid', 'memory', 'task', 'queue'];

/** Code-like bytes: a small instruction vocabulary, aligned absolute pointers, and string tables. */
function synthesize(seed: number, size: number): Buffer {
  const rand = rng(seed);
  const vocabulary = Array.from({ length: 96 }, () => Buffer.from(Array.from({ length: 2 + Math.floor(rand() * 3) }, () => Math.floor(rand() * 256))));
  const out = Buffer.alloc(size);
  let at = 0;
  while (at < size) {
    const r = rand();
    let piece: Buffer;
    if (r < 0.8) piece = vocabulary[Math.floor(rand() ** 2 * vocabulary.length)];
    else if (r < 0.93) {
      piece = Buffer.alloc(4);
      piece.writeUInt32LE(LOAD_ADDRESS + (Math.floor(rand() * size) & ~3));
    } else piece = Buffer.from(`${WORDS[Math.floor(rand() * WORDS.length)]}: %d\0`);
    at += piece.copy(out, at);
  }
  return out;
}

/** The same program rebuilt: code inserted and removed, pointers past each edit relocated. */
function rebuild(base: Buffer, seed: number, size: number): Buffer {
  const rand = rng(seed);
  const edits = Array.from({ length: 4 + Math.floor(base.length / 20000) }, () => Math.floor(rand() * base.length)).sort((a, b) => a - b);
  const pieces: Buffer[] = [];
  let from = 0;
  let shift = 0;
  const shifts: { at: number; shift: number }[] = [];
  for (const at of edits) {
    pieces.push(base.subarray(from, at));
    const inserted = 4 * Math.floor(rand() * 64);
    const removed = 4 * Math.floor(rand() * 16);
    pieces.push(Buffer.from(Array.from({ length: inserted }, () => Math.floor(rand() * 256))));
    shift += inserted - removed;
    shifts.push({ at, shift });
    from = Math.min(base.length, at + removed);
  }
  pieces.push(base.subarray(from));
  const out = Buffer.concat(pieces);
  // Relocation: an aligned word that points into the image moves with the code it points at.
  for (let i = 0; i + 4 <= out.length; i += 4) {
    const word = out.readUInt32LE(i);
    const target = word - LOAD_ADDRESS;
    if (target < 0 || target >= base.length) continue;
    let moved = 0;
    for (const s of shifts) if (target >= s.at) moved = s.shift;
    out.writeUInt32LE((word + moved) >>> 0, i);
  }
  for (let n = Math.floor(out.length / 500); n > 0; n--) out[Math.floor(rand() * out.length)] = Math.floor(rand() * 256);
  if (out.length >= size) return out.subarray(0, size);
  return Buffer.concat([out, base.subarray(0, size - out.length)]);
}
