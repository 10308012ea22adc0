import { parentPort } from 'node:worker_threads';
import { createPatch } from '../shared/delta/index.js';

/** Runs patch creation off the agent's event loop: suffix sorting a 1 MiB image takes seconds. */
parentPort?.on('message', (job: { id: number; base: Uint8Array; target: Uint8Array }) => {
  try {
    const patch = createPatch(job.base, job.target);
    parentPort!.postMessage({ id: job.id, patch });
  } catch (err) {
    parentPort!.postMessage({ id: job.id, error: (err as Error).message });
  }
});
