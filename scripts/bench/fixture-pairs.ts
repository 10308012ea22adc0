import fs from 'node:fs';
import path from 'node:path';

/** An old → new firmware pair, paths relative to the fixtures folder (../shared/fixtures/firmware). */
export interface FixturePair {
  name: string;
  old: string;
  new: string;
}

/** The pairs of the fixtures README (shared/bench/delta-measure.sh's, plus synthesizer 1->3). */
export const KNOWN_PAIRS: FixturePair[] = [
  { name: 'mpy-esp8266 v1.9.4->v1.10', old: 'micropython-esp8266/esp8266-20180511-v1.9.4.bin', new: 'micropython-esp8266/esp8266-20190125-v1.10.bin' },
  { name: 'synthesizer 1->2', old: 'synthesizer/1.bin', new: 'synthesizer/2.bin' },
  { name: 'synthesizer 1->3', old: 'synthesizer/1.bin', new: 'synthesizer/3.bin' },
  { name: 'shell old->new', old: 'shell/old', new: 'shell/new' },
  { name: 'programmer 0.8.0->0.9.0', old: 'programmer/0.8.0.bin', new: 'programmer/0.9.0.bin' },
  { name: 'foo old->new', old: 'foo/old', new: 'foo/new' },
];

/**
 * Pair folders in `dir` that KNOWN_PAIRS does not list (pairs added to the fixtures later): a
 * folder with files `old` and `new` gives old -> new; otherwise its images, in natural name order,
 * give first -> each later one. Patches and notes (.patch, .md, .txt, .json) are not images.
 */
export function discoverPairs(dir: string): FixturePair[] {
  if (!fs.existsSync(dir)) return [];
  const known = new Set(KNOWN_PAIRS.map((p) => p.old.split('/')[0]));
  const out: FixturePair[] = [];
  for (const folder of fs.readdirSync(dir, { withFileTypes: true })) {
    if (!folder.isDirectory() || known.has(folder.name)) continue;
    const files = fs
      .readdirSync(path.join(dir, folder.name), { withFileTypes: true })
      .filter((f) => f.isFile() && !/\.(patch|md|txt|json)$/i.test(f.name))
      .map((f) => f.name)
      .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
    const pair = (a: string, b: string): FixturePair => ({ name: `${folder.name} ${a}->${b}`, old: `${folder.name}/${a}`, new: `${folder.name}/${b}` });
    if (files.includes('old') && files.includes('new')) out.push(pair('old', 'new'));
    else for (const f of files.slice(1)) out.push(pair(files[0], f));
  }
  return out;
}
