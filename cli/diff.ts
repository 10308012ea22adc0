import type { CommandModule } from 'yargs';
import { applyPatch } from '../shared/delta/apply.js';
import { createPatchWithStats, DEFAULT_WINDOW_BITS } from '../shared/delta/create.js';
import { ARCH_NAMES, type ArchName } from '../shared/delta/arch/index.js';
import { detectImage, layoutFor } from '../shared/delta/detect.js';
import { MAX_WINDOW_BITS, MIN_WINDOW_BITS } from '../shared/delta/format.js';
import { AtomicFile, sameFile } from './atomic-file.js';
import { jsonOption, UsageError } from './common.js';
import { readFileOrFail } from './key-files.js';
import { formatBytes, progressBar } from './progress.js';

interface Args {
  old: string;
  new: string;
  out: string;
  'window-bits': number;
  arch: ArchName | 'auto';
  sparse: boolean;
  json: boolean;
}

/** `ferry diff OLD NEW -o PATCH`: a delta patch a node applies in a few KiB (docs/delta.md). */
export const diffCommand: CommandModule<object, Args> = {
  command: 'diff <old> <new>',
  describe: 'make a delta patch that turns firmware image OLD into NEW',
  builder: (y) =>
    y
      .positional('old', { type: 'string', demandOption: true, describe: 'image the node runs now' })
      .positional('new', { type: 'string', demandOption: true, describe: 'image to update it to' })
      .option('out', { alias: 'o', type: 'string', demandOption: true, describe: 'patch file to write' })
      .option('window-bits', {
        type: 'number',
        default: DEFAULT_WINDOW_BITS,
        describe: `DEFLATE window 2^N the node must hold (${MIN_WINDOW_BITS}..${MAX_WINDOW_BITS})`,
      })
      .option('arch', {
        choices: ['auto', ...ARCH_NAMES] as const,
        default: 'auto' as const,
        describe: 'instruction set to predict branches and pointers of (format version 3; the node must support it); auto detects ESP, ELF, Cortex-M and arm64 images, none makes a version 2 patch',
      })
      .option('sparse', {
        type: 'boolean',
        default: true,
        describe: 'allow the sparse diff stream (transform bit 3; the node must announce capability 256); --no-sparse for nodes that read only dense diff streams',
      })
      .option('json', jsonOption)
      .check((argv) => {
        const wb = argv['window-bits'];
        if (!Number.isInteger(wb) || wb < MIN_WINDOW_BITS || wb > MAX_WINDOW_BITS) {
          throw new UsageError(`--window-bits must be an integer ${MIN_WINDOW_BITS}..${MAX_WINDOW_BITS}, got ${String(wb)}`);
        }
        return true;
      }) as never,
  handler: (argv) => {
    if (sameFile(argv.out, argv.old) || sameFile(argv.out, argv.new)) throw new Error(`--out ${argv.out} would overwrite an input image`);
    const oldImage = readFileOrFail(argv.old, 'old image');
    const newImage = readFileOrFail(argv.new, 'new image');
    const started = performance.now();
    const bar = progressBar('diff', { quiet: argv.json });
    const size = Math.max(oldImage.length, newImage.length);
    const layout = argv.arch === 'auto' ? detectImage(newImage, size) : layoutFor(argv.arch, newImage, size);
    const { patch, stats } = createPatchWithStats(oldImage, newImage, {
      windowBits: argv['window-bits'],
      arch: argv.arch,
      sparse: argv.sparse,
      onProgress: (done, total, phase) => {
        if (phase === 'match') bar.update(done, total);
      },
    });
    const seconds = (performance.now() - started) / 1000;
    // Apply it once before writing it out: a patch that does not reproduce NEW must never ship.
    const check = applyPatch(oldImage, patch);
    if (!check.image.equals(newImage)) throw new Error('internal error: the patch does not reproduce the new image; nothing written');
    const file = new AtomicFile(argv.out);
    try {
      file.write(patch);
      file.commit();
    } catch (err) {
      file.abort();
      throw err;
    }
    const summary = {
      old: argv.old,
      new: argv.new,
      patch: argv.out,
      oldBytes: oldImage.length,
      newBytes: newImage.length,
      patchBytes: patch.length,
      ratio: newImage.length ? patch.length / newImage.length : 0,
      seconds: Number(seconds.toFixed(3)),
      windowBits: argv['window-bits'],
      arch: layout.arch,
      image: layout.format,
      transform: stats.transform,
      formatVersion: check.result.header.version,
      peakApplyMemory: check.result.peakWorkingMemory,
      steps: stats.steps,
      copyBytes: stats.copyBytes,
      extraBytes: stats.extraBytes,
    };
    bar.done(`${formatBytes(patch.length)}`);
    if (argv.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
    else {
      process.stdout.write(
        `patch ${argv.out}: ${patch.length} bytes, ${(summary.ratio * 100).toFixed(2)}% of the ${newImage.length}-byte new image; ` +
          `image: ${layout.format}; transform: ${stats.transform} (format v${summary.formatVersion}); ` +
          `made in ${summary.seconds}s; applies in ${summary.peakApplyMemory} bytes of working memory\n`,
      );
    }
  },
};
