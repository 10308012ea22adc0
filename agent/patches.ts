import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { ARCH_NAMES, readPatchHeader, type ArchName } from '../shared/delta/index.js';

/** An image the cache makes patches from or to: its bytes and their SHA-256 (the catalog has both). */
export interface PatchEnd {
  image: Buffer;
  digest: Buffer;
}

export type PatchPhase = 'match' | 'compress' | 'verify';
export type PatchProgress = (phase: PatchPhase, done: number, total: number) => void;

/** What the worker sends back: progress while it works, then the patch or an error. */
type WorkerMessage =
  | { id: number; progress: { phase: PatchPhase; done: number; total: number } }
  | { id: number; patch: Uint8Array; seconds: number }
  | { id: number; error: string };

interface Job {
  resolve: (made: { patch: Buffer; seconds: number }) => void;
  reject: (e: Error) => void;
  onProgress?: PatchProgress;
}

/** Patches kept in RAM besides the disk copy: ESP-class patches are tens of KB. */
const MEMORY_ENTRIES = 32;

/**
 * Delta patches the agent has made, one per (base image digest → target image digest), kept on disk
 * under the data dir so a restart does not recompute them. Creation runs in a worker thread, one job
 * at a time (a Raspberry Pi has few cores and the transfers on the agent's event loop must keep
 * flowing), and the worker applies every new patch once before it is used: a patch that does not
 * rebuild the target is never cached or sent.
 */
export class PatchCache {
  private readonly dir: string;
  private worker: Worker | undefined;
  private nextId = 1;
  private readonly jobs = new Map<number, Job>();
  private readonly inFlight = new Map<string, Promise<Buffer>>();
  private readonly memory = new Map<string, Buffer>();
  /** Pairs whose creation failed: not retried for every node (until forget() or a restart). */
  private readonly failed = new Map<string, string>();
  private readonly log: (level: 'info' | 'warn', msg: string) => void;

  constructor(dataDir: string, opts: { log?: (level: 'info' | 'warn', msg: string) => void } = {}) {
    this.dir = path.join(dataDir, 'patches');
    this.log = opts.log ?? (() => {});
    fs.mkdirSync(this.dir, { recursive: true });
  }

  /**
   * One patch per pair, instruction set (`none`: version 2, which every delta node reads) and diff
   * form (`sparse`: transform bit 3, for nodes announcing capability 256).
   */
  private key(base: Buffer, target: Buffer, arch: ArchName, sparse: boolean): string {
    const pair = `${base.toString('hex').slice(0, 32)}-${target.toString('hex').slice(0, 32)}`;
    return `${arch === 'none' ? pair : `${pair}-${arch}`}${sparse ? '-sparse' : ''}`;
  }

  private file(key: string): string {
    return path.join(this.dir, `${key}.fryd`);
  }

  /** Patch-creation jobs queued or running. */
  get pending(): number {
    return this.inFlight.size;
  }

  /**
   * The patch from `base` to `target` if it is already made (RAM, or disk checked against its
   * header), without starting a job.
   */
  cached(baseDigest: Buffer, targetDigest: Buffer, arch: ArchName = 'none', sparse = false): Buffer | undefined {
    const key = this.key(baseDigest, targetDigest, arch, sparse);
    const hit = this.memory.get(key);
    if (hit) return hit;
    const file = this.file(key);
    let bytes: Buffer;
    try {
      bytes = fs.readFileSync(file);
    } catch {
      return undefined;
    }
    try {
      const h = readPatchHeader(bytes);
      if (!h.baseDigest.equals(baseDigest) || !h.newDigest.equals(targetDigest)) throw new Error('header names other images');
    } catch (err) {
      // A damaged or foreign file: drop it and make the patch again rather than send it.
      this.log('warn', `patch cache: ${path.basename(file)} is unusable (${(err as Error).message}); rebuilding it`);
      fs.rmSync(file, { force: true });
      return undefined;
    }
    this.remember(key, bytes);
    return bytes;
  }

  /**
   * The patch from `base` to `target`, made once (in the worker) if it is not cached. `arch` is the
   * instruction set the receiving node predicts: `deltaArchFor(node caps, target image)`; `sparse`
   * whether it reads sparse diff streams (`deltaSparseFor(node caps)`).
   */
  get(base: PatchEnd, target: PatchEnd, onProgress?: PatchProgress, arch: ArchName = 'none', sparse = false): Promise<Buffer> {
    const hit = this.cached(base.digest, target.digest, arch, sparse);
    if (hit) return Promise.resolve(hit);
    const key = this.key(base.digest, target.digest, arch, sparse);
    const failure = this.failed.get(key);
    if (failure) return Promise.reject(new Error(failure));
    let p = this.inFlight.get(key);
    if (!p) {
      p = this.create(base.image, target.image, arch, sparse, onProgress).then(
        ({ patch, seconds }) => {
          const file = this.file(key);
          const tmp = `${file}.${process.pid}.tmp`;
          fs.writeFileSync(tmp, patch);
          fs.renameSync(tmp, file);
          this.remember(key, patch);
          this.log('info', `patch cache: made ${patch.length} B patch (${pct(patch.length, target.image.length)} of the ${target.image.length} B image) in ${seconds.toFixed(1)} s`);
          return patch;
        },
        (err: Error) => {
          // Only the worker's own verdict is final; a worker that died or was stopped may do better next time.
          if (err instanceof PatchError) this.failed.set(key, err.message);
          throw err;
        },
      );
      p.finally(() => this.inFlight.delete(key)).catch(() => {});
      this.inFlight.set(key, p);
    }
    return p;
  }

  /** Drops a patch a node could not apply (every instruction-set variant), so the next node gets a freshly made one. */
  forget(baseDigest: Buffer, targetDigest: Buffer): void {
    for (const arch of ARCH_NAMES) {
      for (const sparse of [false, true]) {
        const key = this.key(baseDigest, targetDigest, arch, sparse);
        this.memory.delete(key);
        this.failed.delete(key);
        fs.rmSync(this.file(key), { force: true });
      }
    }
  }

  private remember(key: string, patch: Buffer): void {
    this.memory.delete(key);
    this.memory.set(key, patch);
    if (this.memory.size > MEMORY_ENTRIES) this.memory.delete(this.memory.keys().next().value!);
  }

  private create(base: Buffer, target: Buffer, arch: ArchName, sparse: boolean, onProgress?: PatchProgress): Promise<{ patch: Buffer; seconds: number }> {
    const worker = this.worker ?? this.startWorker();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.jobs.set(id, { resolve, reject, onProgress });
      worker.postMessage({ id, base, target, arch, sparse });
    });
  }

  private startWorker(): Worker {
    const worker = new Worker(new URL('./patch-worker.js', import.meta.url));
    // Idle, it must not keep the process alive; the agent's MQTT connection does that.
    worker.unref();
    worker.on('message', (m: WorkerMessage) => {
      const job = this.jobs.get(m.id);
      if (!job) return;
      if ('progress' in m) {
        job.onProgress?.(m.progress.phase, m.progress.done, m.progress.total);
        return;
      }
      this.jobs.delete(m.id);
      if ('patch' in m) job.resolve({ patch: Buffer.from(m.patch.buffer, m.patch.byteOffset, m.patch.byteLength), seconds: m.seconds });
      else job.reject(new PatchError(m.error));
    });
    const lost = (why: string) => {
      if (this.worker !== worker) return;
      this.worker = undefined;
      for (const job of this.jobs.values()) job.reject(new Error(`patch worker ${why}`));
      this.jobs.clear();
    };
    worker.on('error', (err) => lost(`failed: ${err.message}`));
    worker.on('exit', (code) => lost(`exited (code ${code})`));
    this.worker = worker;
    return worker;
  }

  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    for (const job of this.jobs.values()) job.reject(new Error('agent stopping'));
    this.jobs.clear();
    await worker?.terminate();
  }
}

/** The worker could not make a usable patch for this pair (its message says why). */
class PatchError extends Error {}

function pct(part: number, whole: number): string {
  return whole ? `${((part / whole) * 100).toFixed(1)} %` : 'n/a';
}
