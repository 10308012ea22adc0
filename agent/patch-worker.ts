import { parentPort } from 'node:worker_threads';
import { applyPatch, createPatch, type ArchName } from '../shared/delta/index.js';

/**
 * Runs patch creation off the agent's event loop: suffix sorting and the optimal-parse encoder take
 * seconds on a 600 KB image. Reports progress (at most every 5 %), then applies the new patch once:
 * a patch that does not rebuild the target exactly is an error, never a result.
 */
parentPort?.on('message', (job: { id: number; base: Uint8Array; target: Uint8Array; arch?: ArchName; sparse?: boolean }) => {
  const port = parentPort!;
  const started = performance.now();
  let last = '';
  const progress = (phase: 'match' | 'compress' | 'verify', done: number, total: number) => {
    const step = `${phase}:${total ? Math.floor((done / total) * 20) : 0}`;
    if (step === last) return;
    last = step;
    port.postMessage({ id: job.id, progress: { phase, done, total } });
  };
  try {
    const patch = createPatch(job.base, job.target, { arch: job.arch ?? 'none', sparse: job.sparse ?? false, onProgress: (done, total, phase) => progress(phase, done, total) });
    progress('verify', 0, 1);
    const { image } = applyPatch(job.base, patch);
    if (!Buffer.from(image.buffer, image.byteOffset, image.byteLength).equals(job.target)) {
      throw new Error('internal error: the new patch does not rebuild the target image');
    }
    port.postMessage({ id: job.id, patch, seconds: (performance.now() - started) / 1000 });
  } catch (err) {
    port.postMessage({ id: job.id, error: (err as Error).message });
  }
});
