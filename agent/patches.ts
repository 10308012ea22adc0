import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { sha256 } from '../shared/manifest.js';

/**
 * Delta patches the agent has made, one per (base image digest → target image digest), cached on
 * disk under the data dir so a restart does not recompute them. Creation runs in a worker thread,
 * one job at a time (a Raspberry Pi has few cores and the transfers must keep flowing).
 */
export class PatchCache {
  private readonly dir: string;
  private worker: Worker | undefined;
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (b: Buffer) => void; reject: (e: Error) => void }>();
  private readonly inFlight = new Map<string, Promise<Buffer>>();

  constructor(dataDir: string) {
    this.dir = path.join(dataDir, 'patches');
    fs.mkdirSync(this.dir, { recursive: true });
  }

  private file(base: Buffer, target: Buffer): string {
    return path.join(this.dir, `${base.toString('hex').slice(0, 32)}-${target.toString('hex').slice(0, 32)}.fryd`);
  }

  /** The patch from `base` to `target`, made (once) if needed. */
  get(base: Buffer, target: Buffer): Promise<Buffer> {
    const baseDigest = sha256(base);
    const targetDigest = sha256(target);
    const file = this.file(baseDigest, targetDigest);
    try {
      return Promise.resolve(fs.readFileSync(file));
    } catch {
      /* not cached yet */
    }
    const key = path.basename(file);
    let p = this.inFlight.get(key);
    if (!p) {
      p = this.create(base, target).then((patch) => {
        const tmp = `${file}.${process.pid}.tmp`;
        fs.writeFileSync(tmp, patch);
        fs.renameSync(tmp, file);
        return patch;
      });
      p.finally(() => this.inFlight.delete(key)).catch(() => {});
      this.inFlight.set(key, p);
    }
    return p;
  }

  private create(base: Buffer, target: Buffer): Promise<Buffer> {
    if (!this.worker) {
      this.worker = new Worker(new URL('./patch-worker.js', import.meta.url));
      this.worker.unref();
      this.worker.on('message', (m: { id: number; patch?: Uint8Array; error?: string }) => {
        const w = this.waiting.get(m.id);
        if (!w) return;
        this.waiting.delete(m.id);
        if (m.patch) w.resolve(Buffer.from(m.patch.buffer, m.patch.byteOffset, m.patch.byteLength));
        else w.reject(new Error(m.error ?? 'patch worker failed'));
      });
      this.worker.on('error', (err) => {
        for (const w of this.waiting.values()) w.reject(err);
        this.waiting.clear();
        this.worker = undefined;
      });
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker!.postMessage({ id, base, target });
    });
  }

  async close(): Promise<void> {
    await this.worker?.terminate();
    this.worker = undefined;
  }
}
