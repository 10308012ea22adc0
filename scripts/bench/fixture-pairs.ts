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

/** Image files in a folder (not patches or notes), in natural name order. */
function images(dir: string): string[] {
  return entries(dir, 'file').filter((f) => !/\.(patch|md|rst|txt|json|dis|elf|mem)$/i.test(f));
}

/** Names of the files or folders in `dir` (symbolic links followed), in natural name order. */
function entries(dir: string, kind: 'file' | 'dir'): string[] {
  return fs
    .readdirSync(dir)
    .filter((name) => {
      const st = fs.statSync(path.join(dir, name), { throwIfNoEntry: false });
      return st !== undefined && (kind === 'file' ? st.isFile() : st.isDirectory());
    })
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
}

/**
 * Pair folders in `dir` that KNOWN_PAIRS does not list (pairs added to the fixtures later): a
 * folder with files `old` and `new` gives old -> new; a folder of images gives, in natural name
 * order, first -> each later one; a folder of version folders holding same-named images (such as
 * `pybv11/<version>/firmware1.bin`) gives each name from the first version to each later one.
 * Patches, notes, disassemblies and ELF files are not images.
 */
export function discoverPairs(dir: string): FixturePair[] {
  if (!fs.existsSync(dir)) return [];
  const known = new Set(KNOWN_PAIRS.map((p) => p.old.split('/')[0]));
  const out: FixturePair[] = [];
  for (const folder of entries(dir, 'dir')) {
    if (known.has(folder)) continue;
    const at = path.join(dir, folder);
    const pair = (a: string, b: string): FixturePair => ({ name: `${folder} ${a}->${b}`, old: `${folder}/${a}`, new: `${folder}/${b}` });
    const files = images(at);
    if (files.includes('old') && files.includes('new')) out.push(pair('old', 'new'));
    else if (files.length > 1) for (const f of files.slice(1)) out.push(pair(files[0], f));
    else {
      const versions = entries(at, 'dir');
      const byVersion = versions.map((v) => new Set(images(path.join(at, v))));
      for (const name of byVersion[0] ?? []) {
        for (let i = 1; i < versions.length; i++) if (byVersion[i].has(name)) out.push(pair(`${versions[0]}/${name}`, `${versions[i]}/${name}`));
      }
    }
  }
  return out;
}
