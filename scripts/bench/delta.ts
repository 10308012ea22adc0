/**
 * Delta patches on every firmware pair in the shared fixtures, in one run: ferry's patch size, % of
 * the new image, creation seconds and applier peak working memory, beside bsdiff, xdelta3 and
 * zstd --patch-from measured now (Debian tools, same flags as shared/bench/delta-measure.sh) and
 * detools' published figures for the ESP8266 pair.
 *
 *   node dist/scripts/bench/delta.js [--fixtures DIR] [--json]      (or FERRY_FIXTURES=DIR)
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { applyPatch } from '../../shared/delta/apply.js';
import { createPatch } from '../../shared/delta/create.js';

interface Pair {
  name: string;
  old: string;
  new: string;
}

// Same pairs as shared/bench/delta-measure.sh, plus synthesizer 1->3.
const PAIRS: Pair[] = [
  { name: 'mpy-esp8266 v1.9.4->v1.10', old: 'micropython-esp8266/esp8266-20180511-v1.9.4.bin', new: 'micropython-esp8266/esp8266-20190125-v1.10.bin' },
  { name: 'synthesizer 1->2', old: 'synthesizer/1.bin', new: 'synthesizer/2.bin' },
  { name: 'synthesizer 1->3', old: 'synthesizer/1.bin', new: 'synthesizer/3.bin' },
  { name: 'shell old->new', old: 'shell/old', new: 'shell/new' },
  { name: 'programmer 0.8.0->0.9.0', old: 'programmer/0.8.0.bin', new: 'programmer/0.9.0.bin' },
  { name: 'foo old->new', old: 'foo/old', new: 'foo/new' },
];

/** detools' published sizes for the ESP8266 pair (fixtures README and issue 5); not re-measured here. */
const PUBLISHED = [
  { method: 'detools esp_delta_ota (bsdiff+heatshrink) [published]', bytes: 96957, applyMemory: '720 B state' },
  { method: 'detools bsdiff+lzma [published]', bytes: 71803, applyMemory: '~8 MiB' },
  { method: 'HDiffPatch lzma [published]', bytes: 67432, applyMemory: '~100 KB' },
  { method: 'detools hdiffpatch+lzma [published]', bytes: 65927, applyMemory: 'no device applier' },
];

interface Row {
  pair: string;
  method: string;
  bytes: number | null;
  pctNew: number | null;
  createSeconds: number | null;
  applyMemory: string;
  ok: string;
}

function args(): { fixtures: string; json: boolean } {
  const argv = process.argv.slice(2);
  const here = path.dirname(fileURLToPath(import.meta.url));
  // dist/scripts/bench -> repo root -> ../shared/fixtures/firmware
  let fixtures = process.env.FERRY_FIXTURES ?? path.resolve(here, '../../../../shared/fixtures/firmware');
  let json = false;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--json') json = true;
    else if (argv[i] === '--fixtures' && argv[i + 1]) fixtures = path.resolve(argv[++i]);
    else {
      process.stderr.write(`delta bench: unknown argument ${argv[i]} (use --fixtures DIR, --json)\n`);
      process.exit(2);
    }
  }
  return { fixtures, json };
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
  const { fixtures, json } = args();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-delta-bench-'));
  const rows: Row[] = [];
  const tools = { bsdiff: have('bsdiff') && have('bspatch'), xdelta3: have('xdelta3'), zstd: have('zstd') };
  try {
    for (const pair of PAIRS) {
      const oldFile = path.join(fixtures, pair.old);
      const newFile = path.join(fixtures, pair.new);
      if (!fs.existsSync(oldFile) || !fs.existsSync(newFile)) {
        rows.push({ pair: pair.name, method: '(fixture missing)', bytes: null, pctNew: null, createSeconds: null, applyMemory: '', ok: '' });
        continue;
      }
      const oldImage = fs.readFileSync(oldFile);
      const newImage = fs.readFileSync(newFile);
      const pct = (n: number) => Number(((100 * n) / newImage.length).toFixed(2));
      const t0 = performance.now();
      const patch = createPatch(oldImage, newImage);
      const createSeconds = (performance.now() - t0) / 1000;
      // Applied in 1 KiB pieces through the streaming applier, as a node receiving chunks would.
      const { image, result } = applyPatch(oldImage, patch, { pieceSize: 1024 });
      rows.push({
        pair: pair.name,
        method: 'ferry v2 (3 raw DEFLATE streams, 2^9+2^12+2^12)',
        bytes: patch.length,
        pctNew: pct(patch.length),
        createSeconds: Number(createSeconds.toFixed(3)),
        applyMemory: `${result.peakWorkingMemory} B`,
        ok: image.equals(newImage) ? 'yes' : 'NO',
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
        rows.push({ pair: pair.name, method, bytes: r.bytes, pctNew: pct(r.bytes), createSeconds: Number(r.seconds.toFixed(3)), applyMemory: 'not measured', ok: r.ok ? 'yes' : 'NO' });
      }
      if (pair.name.startsWith('mpy-esp8266')) {
        for (const pub of PUBLISHED) {
          rows.push({ pair: pair.name, method: pub.method, bytes: pub.bytes, pctNew: pct(pub.bytes), createSeconds: null, applyMemory: pub.applyMemory, ok: '' });
        }
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
