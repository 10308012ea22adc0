import fs from 'node:fs';
import path from 'node:path';

/**
 * Writes a file so that readers see either nothing or the complete file: the bytes go to a
 * temporary file beside the target, are fsynced, and only then renamed over it. On failure the
 * temporary file is removed and the target is left as it was.
 */
export class AtomicFile {
  private readonly tmp: string;
  private fd: number | undefined;
  constructor(readonly target: string) {
    this.tmp = path.join(path.dirname(path.resolve(target)), `.${path.basename(target)}.${process.pid}.${Date.now()}.tmp`);
    this.fd = fs.openSync(this.tmp, 'wx', 0o644);
  }
  write(bytes: Uint8Array): void {
    let off = 0;
    while (off < bytes.length) off += fs.writeSync(this.fd!, bytes, off, bytes.length - off);
  }
  commit(): void {
    fs.fsyncSync(this.fd!);
    fs.closeSync(this.fd!);
    this.fd = undefined;
    fs.renameSync(this.tmp, this.target);
  }
  abort(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
    fs.rmSync(this.tmp, { force: true });
  }
}

/** True when the two paths name the same existing file (also through links). */
export function sameFile(a: string, b: string): boolean {
  try {
    const sa = fs.statSync(a);
    const sb = fs.statSync(b);
    return sa.dev === sb.dev && sa.ino === sb.ino;
  } catch {
    return path.resolve(a) === path.resolve(b);
  }
}
