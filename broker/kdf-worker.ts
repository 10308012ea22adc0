import crypto from 'node:crypto';
import { parentPort } from 'node:worker_threads';

/**
 * The password KDF's thread (broker/kdf.ts): scrypt, synchronously, one job at a time. Running it
 * here rather than on libuv's pool keeps its 16 MiB working buffer in this one thread's allocator
 * arena instead of one per pool thread (see kdf.ts).
 */
parentPort?.on('message', (job: { id: number; password: Uint8Array; salt: Uint8Array; keyLength: number; options: crypto.ScryptOptions }) => {
  try {
    const hash = crypto.scryptSync(job.password, job.salt, job.keyLength, job.options);
    parentPort!.postMessage({ id: job.id, hash });
  } catch (err) {
    parentPort!.postMessage({ id: job.id, error: (err as Error).message });
  }
});
