import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { applyPatch } from '../shared/delta/apply.js';
import { createPatchWithStats, type CreatePatchOptions } from '../shared/delta/create.js';
import { discoverPairs, KNOWN_PAIRS } from '../scripts/bench/fixture-pairs.js';
import { firmware, fixturesDir } from './helpers/fixtures.js';

/**
 * A ferry patch is never larger than bsdiff's (issue 14): on every firmware pair available, bsdiff
 * (Debian's `bsdiff` package, .ci/packages.txt) runs side by side with ferry on the same two files,
 * and each patch a delta-capable node can be sent must be at most bsdiff's size. Pairs: the
 * fixtures README's, plus any other pair folder found in the fixtures (discoverPairs).
 */

function read(rel: string): Buffer {
  return fixturesDir && fs.existsSync(path.join(fixturesDir, rel)) ? fs.readFileSync(path.join(fixturesDir, rel)) : firmware(rel);
}

const haveBsdiff = spawnSync('sh', ['-c', 'command -v bsdiff'], { stdio: 'ignore' }).status === 0;

/** bsdiff's patch size for these two images (bsdiff 4 format, bzip2 inside); undefined when bsdiff cannot make one (it refuses an empty old image). */
function bsdiffSize(work: string, oldImage: Buffer, newImage: Buffer): number | undefined {
  const [o, n, p] = ['old', 'new', 'patch'].map((f) => path.join(work, f));
  fs.writeFileSync(o, oldImage);
  fs.writeFileSync(n, newImage);
  const r = spawnSync('bsdiff', [o, n, p], { stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) return undefined;
  return fs.statSync(p).size;
}

/** The patches a delta-capable node can be sent: plain (no instruction set), and instruction-aware. */
const KINDS: { name: string; opts: CreatePatchOptions }[] = [
  { name: 'plain (capability 1 + 256)', opts: { sparse: true } },
  { name: 'instruction-aware (capability 1 + 256 + its instruction set)', opts: { arch: 'auto', sparse: true } },
];

t.test('ferry patch <= bsdiff patch on every available pair', { skip: haveBsdiff ? false : 'bsdiff is not installed (apt-get install bsdiff; listed in .ci/packages.txt)' }, async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-vs-bsdiff-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  for (const { old: a, new: b } of [...KNOWN_PAIRS, ...(fixturesDir ? discoverPairs(fixturesDir) : [])]) {
    const oldImage = read(a);
    const newImage = read(b);
    const bsdiff = bsdiffSize(work, oldImage, newImage);
    if (bsdiff === undefined) {
      t.comment(`${a} -> ${b}: bsdiff makes no patch for this pair; nothing to compare`);
      continue;
    }
    for (const kind of KINDS) {
      const { patch, stats } = createPatchWithStats(oldImage, newImage, kind.opts);
      const { image } = applyPatch(oldImage, patch, { pieceSize: 997 });
      t.ok(Buffer.from(image).equals(newImage), `${a} -> ${b}, ${kind.name}: the patch rebuilds the new image`);
      t.ok(patch.length <= bsdiff, `${a} -> ${b}, ${kind.name}: ferry ${patch.length} B (${stats.transform}) <= bsdiff ${bsdiff} B`);
    }
  }
});
