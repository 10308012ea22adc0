/**
 * Delta patches on every firmware pair in the shared fixtures, in one run: ferry's patch size for
 * each transform that applies to the pair (none, ESP8266 pointers, instruction prediction with and
 * without pointers), each with a dense and (capability 256) a sparse diff stream, and the patch
 * ferry picks for each kind of node (capability 1 only; 1 + 256; 1 + 256 + the image's instruction
 * set), with % of the new image, creation seconds and applier peak working memory, beside bsdiff,
 * xdelta3 and zstd --patch-from measured now (Debian tools, same flags as
 * shared/bench/delta-measure.sh) and detools' published figures. The last column of each pick is
 * its size as a multiple of bsdiff's, measured in the same run. Pair folders the fixtures README
 * does not list are found and measured too (fixture-pairs.ts).
 *
 *   node dist/scripts/bench/delta.js [--fixtures DIR] [--pairs REGEX] [--json]      (or FERRY_FIXTURES=DIR)
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { applyPatch } from '../../shared/delta/apply.js';
import { candidates, createPatchWithStats } from '../../shared/delta/create.js';
import { detectImage } from '../../shared/delta/detect.js';
import { Transform } from '../../shared/delta/format.js';
import { discoverPairs, KNOWN_PAIRS } from './fixture-pairs.js';

/**
 * Published or reference-measured figures (../shared/reference/delta.md; issue 15 for detools'
 * data-format-aware figures); not re-measured here.
 */
const PUBLISHED: Record<string, { method: string; bytes: number; applyMemory: string }[]> = {
  'mpy-esp8266': [
    { method: 'detools esp_delta_ota (bsdiff+heatshrink) [published]', bytes: 96957, applyMemory: '720 B state' },
    { method: 'detools bsdiff+lzma [published]', bytes: 71803, applyMemory: '~8 MiB' },
    { method: 'detools bsdiff+lzma, xtensa-lx106 data format [published]', bytes: 71237, applyMemory: '~8 MiB' },
    { method: 'HDiffPatch lzma [published]', bytes: 67432, applyMemory: '~100 KB' },
    { method: 'detools hdiffpatch+lzma [published]', bytes: 65927, applyMemory: 'no device applier' },
  ],
  'synthesizer 1->2': [{ method: 'detools bsdiff+lzma [reference]', bytes: 1121, applyMemory: '~8 MiB' }],
  shell: [
    { method: 'detools bsdiff+lzma [reference]', bytes: 1742, applyMemory: '~8 MiB' },
    { method: 'detools shell pair, plain [published, issue 15]', bytes: 1412, applyMemory: '~8 MiB' },
    { method: 'detools shell pair, data format aware [published, issue 15]', bytes: 619, applyMemory: '~8 MiB' },
  ],
  programmer: [{ method: 'detools bsdiff+lzma [reference]', bytes: 1341, applyMemory: '~8 MiB' }],
};

/**
 * What the Debian tools need to apply, from ../shared/reference/delta.md §4 (valgrind-measured on
 * the ESP8266 pair; not re-measured here): none of them streams in bounded memory.
 */
const EXTERNAL_APPLY_MEMORY: Record<string, string> = {
  'bsdiff (bzip2)': 'old+new + 3 bzip2 (12 MB) [ref]',
  'xdelta3 -9 -S djw': '64 MiB window (68 MB) [ref]',
  'zstd -19 --patch-from': 'whole old image (4.4 MB) [ref]',
};

interface Row {
  pair: string;
  method: string;
  bytes: number | null;
  pctNew: number | null;
  createSeconds: number | null;
  applyMemory: string;
  ok: string;
}

function args(): { fixtures: string; json: boolean; pairs: RegExp } {
  const argv = process.argv.slice(2);
  const here = path.dirname(fileURLToPath(import.meta.url));
  // dist/scripts/bench -> repo root -> ../shared/fixtures/firmware
  let fixtures = process.env.FERRY_FIXTURES ?? path.resolve(here, '../../../../shared/fixtures/firmware');
  let json = false;
  let pairs = /./;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--json') json = true;
    else if (argv[i] === '--pairs' && argv[i + 1]) pairs = new RegExp(argv[++i]);
    else if (argv[i] === '--fixtures' && argv[i + 1]) fixtures = path.resolve(argv[++i]);
    else {
      process.stderr.write(`delta bench: unknown argument ${argv[i]} (use --fixtures DIR, --pairs REGEX, --json)\n`);
      process.exit(2);
    }
  }
  return { fixtures, json, pairs };
}

function have(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;
}

/** Runs a Debian tool's create and apply (argv as in delta-measure.sh), returns size, seconds, ok. */
function external(tool: string, create: string[], apply: string[], patch: string, out: string, expected: Buffer): { bytes: number; seconds: number; ok: boolean } {
  const t0 = performance.now();
  const c = spawnSync(tool, create, { stdio: ['ignore', 'ignore', 'pipe'] });
  const seconds = (performance.now() - t0) / 1000;
  if (c.status !== 0) throw new Error(`${tool} ${create.join(' ')}: ${c.stderr.toString().trim()}`);
  const a = spawnSync(apply[0], apply.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  const ok = a.status === 0 && fs.readFileSync(out).equals(expected);
  return { bytes: fs.statSync(patch).size, seconds, ok };
}

function main(): void {
  const { fixtures, json, pairs } = args();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-delta-bench-'));
  const rows: Row[] = [];
  const tools = { bsdiff: have('bsdiff') && have('bspatch'), xdelta3: have('xdelta3'), zstd: have('zstd') };
  try {
    for (const pair of [...KNOWN_PAIRS, ...discoverPairs(fixtures)].filter((p) => pairs.test(p.name))) {
      const oldFile = path.join(fixtures, pair.old);
      const newFile = path.join(fixtures, pair.new);
      if (!fs.existsSync(oldFile) || !fs.existsSync(newFile)) {
        rows.push({ pair: pair.name, method: '(fixture missing)', bytes: null, pctNew: null, createSeconds: null, applyMemory: '', ok: '' });
        continue;
      }
      const oldImage = fs.readFileSync(oldFile);
      const newImage = fs.readFileSync(newFile);
      const pct = (n: number) => Number(((100 * n) / newImage.length).toFixed(2));
      const layout = detectImage(newImage, Math.max(oldImage.length, newImage.length));
      // One patch per transform that applies (each made alone), dense and, for nodes with
      // capability 256, with the sparse diff stream allowed; then ferry's picks are the smallest.
      const made: { name: string; bytes: number; version: number; sparse: boolean }[] = [];
      for (const c of candidates(oldImage, newImage, { arch: 'auto' })) {
        for (const sparse of [false, true]) {
          const t0 = performance.now();
          const { patch, stats } = createPatchWithStats(oldImage, newImage, { arch: 'auto', only: c.name, sparse });
          const createSeconds = (performance.now() - t0) / 1000;
          // Applied in 1 KiB pieces through the streaming applier, as a node receiving chunks would.
          const { image, result } = applyPatch(oldImage, patch, { pieceSize: 1024 });
          const isSparse = (result.header.transforms & Transform.sparseDiff) !== 0;
          made.push({ name: stats.transform, bytes: patch.length, version: result.header.version, sparse });
          rows.push({
            pair: pair.name,
            method: `ferry, transform: ${stats.transform} (v${result.header.version}${isSparse ? ' + bit 3' : ''})${sparse && !isSparse ? ' [sparse allowed, dense smaller]' : ''}`,
            bytes: patch.length,
            pctNew: pct(patch.length),
            createSeconds: Number(createSeconds.toFixed(3)),
            applyMemory: `${result.peakWorkingMemory} B`,
            ok: image.equals(newImage) ? 'yes' : 'NO',
          });
        }
      }
      const pick = (list: typeof made) => list.reduce((a, b) => (b.bytes < a.bytes ? b : a));
      const who = layout.arch === 'none' ? 'no instruction set detected' : `the ${layout.arch} capability`;
      const picks: [string, (typeof made)[number]][] = [
        ['node with capability 1 only (dense, version 2)', pick(made.filter((m) => m.version === 2 && !m.sparse))],
        ['node with capabilities 1 + 256, plain', pick(made.filter((m) => m.version === 2 && m.sparse))],
        [`node with capabilities 1 + 256 + ${who}`, pick(made.filter((m) => m.sparse))],
      ];
      const pickRows = picks.map(([who, m]) => {
        rows.push({ pair: pair.name, method: `ferry pick, ${who}: ${m.name}${who.endsWith('detected') ? '' : ` [${layout.format}]`}`, bytes: m.bytes, pctNew: pct(m.bytes), createSeconds: null, applyMemory: '', ok: '' });
        return [rows[rows.length - 1], m.bytes] as const;
      });
      const p = path.join(work, 'patch');
      const o = path.join(work, 'out');
      const measured: [string, boolean, () => ReturnType<typeof external>][] = [
        ['bsdiff (bzip2)', tools.bsdiff, () => external('bsdiff', [oldFile, newFile, p], ['bspatch', oldFile, o, p], p, o, newImage)],
        ['xdelta3 -9 -S djw', tools.xdelta3, () => external('xdelta3', ['-e', '-9', '-S', 'djw', '-f', '-s', oldFile, newFile, p], ['xdelta3', '-d', '-f', '-s', oldFile, p, o], p, o, newImage)],
        ['zstd -19 --patch-from', tools.zstd, () => external('zstd', ['-q', '-f', '-19', `--patch-from=${oldFile}`, newFile, '-o', p], ['zstd', '-q', '-f', '-d', `--patch-from=${oldFile}`, p, '-o', o], p, o, newImage)],
      ];
      for (const [method, installed, run] of measured) {
        if (!installed) {
          rows.push({ pair: pair.name, method: `${method}: not installed`, bytes: null, pctNew: null, createSeconds: null, applyMemory: '', ok: '' });
          continue;
        }
        const r = run();
        rows.push({ pair: pair.name, method, bytes: r.bytes, pctNew: pct(r.bytes), createSeconds: Number(r.seconds.toFixed(3)), applyMemory: EXTERNAL_APPLY_MEMORY[method] ?? '-', ok: r.ok ? 'yes' : 'NO' });
        if (method.startsWith('bsdiff')) {
          for (const [row, bytes] of pickRows) row.ok = `${(bytes / r.bytes).toFixed(3)} x bsdiff (${r.bytes})${bytes <= r.bytes ? '' : ': LARGER'}`;
        }
      }
      for (const pub of PUBLISHED[pair.name] ?? PUBLISHED[pair.name.split(' ')[0]] ?? []) {
        rows.push({ pair: pair.name, method: pub.method, bytes: pub.bytes, pctNew: pct(pub.bytes), createSeconds: null, applyMemory: pub.applyMemory, ok: '' });
      }
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  if (json) {
    process.stdout.write(`${JSON.stringify({ fixtures, rows }, null, 2)}\n`);
    return;
  }
  const cell = (v: number | string | null) => (v === null ? '-' : String(v));
  process.stdout.write(`# fixtures: ${fixtures}\n# host: ${os.cpus().length} cores, ${os.cpus()[0]?.model ?? '?'}, node ${process.version}\n\n`);
  process.stdout.write('| pair | method | bytes | %new | create_s | apply memory | ok |\n|---|---|---:|---:|---:|---:|---|\n');
  for (const r of rows) {
    process.stdout.write(`| ${r.pair} | ${r.method} | ${cell(r.bytes)} | ${cell(r.pctNew)} | ${cell(r.createSeconds)} | ${r.applyMemory || '-'} | ${r.ok || '-'} |\n`);
  }
}

main();
