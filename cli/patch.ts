import fs from 'node:fs';
import type { CommandModule } from 'yargs';
import { checkBase, PatchApplier } from '../shared/delta/apply.js';
import { MAX_HEADER_SIZE, readPatchHeader } from '../shared/delta/format.js';
import { AtomicFile, sameFile } from './atomic-file.js';
import { jsonOption } from './common.js';
import { readFileOrFail } from './key-files.js';
import { progressBar } from './progress.js';

interface Args {
  old: string;
  patch: string;
  out: string;
  json: boolean;
}

/** Patch bytes read per push: about one MQTT chunk, as a node would receive them. */
const PIECE = 4096;

/** `ferry patch OLD PATCH -o OUT`: applies a delta the way a node does, streaming, OLD read-only. */
export const patchCommand: CommandModule<object, Args> = {
  command: 'patch <old> <patch>',
  describe: 'apply a delta patch to firmware image OLD, writing the new image to OUT',
  builder: (y) =>
    y
      .positional('old', { type: 'string', demandOption: true, describe: 'image the patch was made from (never modified)' })
      .positional('patch', { type: 'string', demandOption: true, describe: 'patch from ferry diff' })
      .option('out', { alias: 'o', type: 'string', demandOption: true, describe: 'new image to write (appears only when complete and verified)' })
      .option('json', jsonOption) as never,
  handler: (argv) => {
    if (sameFile(argv.out, argv.old) || sameFile(argv.out, argv.patch)) throw new Error(`--out ${argv.out} would overwrite an input file`);
    const started = performance.now();
    const oldImage = readFileOrFail(argv.old, 'old image');
    let fd: number;
    try {
      fd = fs.openSync(argv.patch, 'r');
    } catch (err) {
      throw new Error(`cannot read patch ${argv.patch}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    const patchSize = fs.fstatSync(fd).size;
    const piece = Buffer.alloc(PIECE);
    let file: AtomicFile | undefined;
    try {
      // The header alone says whether this patch fits OLD: check before writing anything.
      const head = Buffer.alloc(MAX_HEADER_SIZE);
      const got = fs.readSync(fd, head, 0, MAX_HEADER_SIZE, 0);
      const header = readPatchHeader(head.subarray(0, got));
      checkBase(header, oldImage);
      file = new AtomicFile(argv.out);
      const out = file;
      const applier = new PatchApplier({
        readOld: (offset, length) => oldImage.subarray(offset, offset + length),
        write: (bytes) => out.write(bytes),
        expectBaseDigest: header.baseDigest,
      });
      const bar = progressBar('patch', { quiet: argv.json });
      let pos = 0;
      for (;;) {
        const n = fs.readSync(fd, piece, 0, PIECE, pos);
        if (n === 0) break;
        applier.push(piece.subarray(0, n));
        pos += n;
        bar.update(pos, patchSize);
      }
      const result = applier.finish();
      file.commit();
      file = undefined;
      const seconds = (performance.now() - started) / 1000;
      bar.done(`${result.newSize} bytes`);
      const summary = {
        old: argv.old,
        patch: argv.patch,
        out: argv.out,
        patchBytes: pos,
        outBytes: result.newSize,
        digest: result.newDigest.toString('hex'),
        seconds: Number(seconds.toFixed(3)),
        peakWorkingMemory: result.peakWorkingMemory,
      };
      if (argv.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else {
        process.stdout.write(
          `wrote ${argv.out}: ${result.newSize} bytes, sha256 ${summary.digest.slice(0, 16)}… verified; ` +
            `${summary.seconds}s; peak working memory ${summary.peakWorkingMemory} bytes\n`,
        );
      }
    } finally {
      file?.abort();
      fs.closeSync(fd);
    }
  },
};
