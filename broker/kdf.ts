import crypto from 'node:crypto';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';

/**
 * Where the password KDF (scrypt, 16 MiB and ~30 ms per hash) runs.
 *
 * On libuv's thread pool each pool thread that ever ran one keeps a 16 MiB block in its own malloc
 * arena: glibc raises its mmap threshold after the first such block is freed, so later ones come from
 * (and stay in) the arenas. A broker verifying logins one after another still lands them on all four
 * pool threads in turn: 64 MiB of resident memory for nothing, a quarter of a 1,000-node gateway's
 * budget. A dedicated thread keeps that to one block, and leaves the pool to file I/O meanwhile.
 *
 * - {@link threadKdf}: one worker thread per process, one hash at a time, stopped when idle. For
 *   long-running processes (brokers, gateways) and single hashes.
 * - {@link poolKdf}: libuv's pool, hashes side by side. For short batch jobs that provision many
 *   identities at once (`ferry sim --provision`, `ferry demo`), where speed matters and the process ends.
 */
export type Kdf = (password: Buffer, salt: Buffer, keyLength: number, options: crypto.ScryptOptions) => Promise<Buffer>;

const scrypt = promisify(crypto.scrypt) as (pw: crypto.BinaryLike, salt: crypto.BinaryLike, len: number, opts: crypto.ScryptOptions) => Promise<Buffer>;

export const poolKdf: Kdf = (password, salt, keyLength, options) => scrypt(password, salt, keyLength, options);

/** A thread idle this long is stopped (its V8 heap freed); the next hash starts another (~50 ms). */
const IDLE_MS = 30_000;

type Reply = { id: number; hash: Uint8Array } | { id: number; error: string };

interface Job {
  resolve: (hash: Buffer) => void;
  reject: (err: Error) => void;
}

class KdfThread {
  private worker: Worker | undefined;
  private readonly jobs = new Map<number, Job>();
  private nextId = 1;
  private idle: NodeJS.Timeout | undefined;

  run(password: Buffer, salt: Buffer, keyLength: number, options: crypto.ScryptOptions): Promise<Buffer> {
    const worker = this.ensure();
    const id = this.nextId++;
    if (this.idle) clearTimeout(this.idle);
    this.idle = undefined;
    // While a hash is pending the thread keeps the process alive (a CLI awaits it); idle, it must not.
    worker.ref();
    return new Promise<Buffer>((resolve, reject) => {
      this.jobs.set(id, { resolve, reject });
      // Copies: a Buffer may be a view into Node's shared pool, which would go along whole.
      worker.postMessage({ id, password: Uint8Array.from(password), salt: Uint8Array.from(salt), keyLength, options });
    });
  }

  private ensure(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(new URL('./kdf-worker.js', import.meta.url));
    worker.on('message', (m: Reply) => {
      const job = this.jobs.get(m.id);
      if (!job) return;
      this.jobs.delete(m.id);
      if ('hash' in m) job.resolve(Buffer.from(m.hash.buffer, m.hash.byteOffset, m.hash.byteLength));
      else job.reject(new Error(m.error));
      if (this.jobs.size === 0) this.settle(worker);
    });
    const gone = (err: Error) => {
      if (this.worker !== worker) return;
      this.worker = undefined;
      for (const job of this.jobs.values()) job.reject(err);
      this.jobs.clear();
    };
    worker.on('error', gone);
    worker.on('exit', (code) => gone(new Error(`the password hashing thread exited (code ${code})`)));
    this.worker = worker;
    return worker;
  }

  /** No hash pending: let the process exit, and stop the thread if nothing comes for a while. */
  private settle(worker: Worker): void {
    worker.unref();
    this.idle = setTimeout(() => {
      this.idle = undefined;
      if (this.jobs.size > 0 || this.worker !== worker) return;
      this.worker = undefined;
      void worker.terminate();
    }, IDLE_MS);
    this.idle.unref();
  }
}

const thread = new KdfThread();

export const threadKdf: Kdf = (password, salt, keyLength, options) => thread.run(password, salt, keyLength, options);
