import fs from 'node:fs';
import path from 'node:path';

/**
 * Emulated NOR flash, the way an ESP32's SPI flash behaves:
 * - erase works on whole 4 KiB sectors and sets every bit to 1 (0xFF);
 * - a write can only clear bits: the stored byte becomes old AND new, so code that forgets to erase
 *   before writing corrupts data exactly like it would on hardware;
 * - every erase and write goes through one choke point (`mutate`) where a power cut can be injected
 *   before, after, or in the middle of the operation (torn).
 *
 * Storage is sparse: a sector that was never written (or was erased) holds no memory, so 50 nodes
 * with two 2 MiB slots each only cost what their images really occupy.
 */
export const SECTOR_SIZE = 4096;

export type CutMode = 'before' | 'after' | 'torn';

/** Thrown from inside a flash operation when the injector cuts power; the simulator "reboots". */
export class PowerCut extends Error {
  readonly op: FlashOp;
  readonly mode: CutMode;
  constructor(op: FlashOp, mode: CutMode) {
    super(`power cut ${mode} ${op.kind} #${op.seq} at 0x${op.offset.toString(16)} (${op.length} bytes)`);
    this.name = 'PowerCut';
    this.op = op;
    this.mode = mode;
  }
}

export interface FlashOp {
  kind: 'erase' | 'write';
  /** 1-based count of mutating operations since the flash was created (or counters reset). */
  seq: number;
  offset: number;
  length: number;
}

export interface PowerCutPlan {
  /** Cut at the Nth mutating operation counted from when the plan is armed (1 = the next one). */
  at: number;
  mode: CutMode;
  /** For torn operations: fraction (0..1) of the bytes that reach the flash. Default: random. */
  fraction?: number;
}

export interface FlashStats {
  erases: number;
  writes: number;
  bytesWritten: number;
  reads: number;
  /** Erase count of the most-erased sector: the wear figure that limits NOR lifetime. */
  maxSectorErases: number;
}

export interface FlashOptions {
  /** Back the flash with this file so a simulated node survives a process restart. */
  file?: string;
}

export class Flash {
  readonly size: number;
  readonly sectorCount: number;
  private readonly sectors = new Map<number, Buffer>();
  private readonly eraseCounts: Uint32Array;
  private plan: (PowerCutPlan & { remaining: number }) | undefined;
  private opSeq = 0;
  private readonly file: string | undefined;
  private readonly dirty = new Set<number>();
  private fd: number | undefined;
  /** Called for every mutating operation before it happens (tests, sweeps, tracing). */
  onOperation: ((op: FlashOp) => void) | undefined;
  readonly stats: FlashStats = { erases: 0, writes: 0, bytesWritten: 0, reads: 0, maxSectorErases: 0 };

  constructor(size: number, opts: FlashOptions = {}) {
    if (!Number.isInteger(size) || size <= 0 || size % SECTOR_SIZE !== 0) throw new RangeError(`flash size ${size} must be a positive multiple of ${SECTOR_SIZE}`);
    this.size = size;
    this.sectorCount = size / SECTOR_SIZE;
    this.eraseCounts = new Uint32Array(this.sectorCount);
    this.file = opts.file;
    if (this.file) this.load(this.file);
  }

  /** Mutating operations so far: the sweep's cut points are 1..operations. */
  get operations(): number {
    return this.opSeq;
  }

  read(offset: number, length: number): Buffer {
    this.checkRange(offset, length);
    this.stats.reads++;
    const out = Buffer.alloc(length, 0xff);
    this.forEachSector(offset, length, (sector, from, to, outAt) => {
      const data = this.sectors.get(sector);
      if (data) data.copy(out, outAt, from, to);
    });
    return out;
  }

  /** True when every byte of the range reads 0xFF (cheap for never-written sectors). */
  isErased(offset: number, length: number): boolean {
    let erased = true;
    this.forEachSector(offset, length, (sector, from, to) => {
      const data = this.sectors.get(sector);
      if (!data || !erased) return;
      for (let i = from; i < to; i++) if (data[i] !== 0xff) { erased = false; return; }
    });
    return erased;
  }

  /** Erases whole sectors covering [offset, offset+length); both must be sector-aligned. */
  erase(offset: number, length: number): void {
    if (offset % SECTOR_SIZE !== 0 || length % SECTOR_SIZE !== 0 || length === 0) {
      throw new RangeError(`erase 0x${offset.toString(16)}+${length} is not sector-aligned`);
    }
    this.checkRange(offset, length);
    this.mutate('erase', offset, length, (fraction) => {
      const first = offset / SECTOR_SIZE;
      const count = length / SECTOR_SIZE;
      // A torn erase finishes some sectors and leaves the one it was working on half-erased.
      const whole = fraction === undefined ? count : Math.floor(count * fraction);
      for (let s = first; s < first + whole; s++) this.eraseSector(s);
      if (fraction !== undefined && whole < count) this.scrambleSector(first + whole);
    });
  }

  /** NOR write: each stored byte becomes old AND new. Writing over unerased data corrupts it. */
  write(offset: number, data: Uint8Array): void {
    this.checkRange(offset, data.length);
    if (data.length === 0) return;
    this.mutate('write', offset, data.length, (fraction) => {
      const n = fraction === undefined ? data.length : Math.floor(data.length * fraction);
      this.forEachSector(offset, n, (sector, from, to, srcAt) => {
        let buf = this.sectors.get(sector);
        if (!buf) {
          buf = Buffer.alloc(SECTOR_SIZE, 0xff);
          this.sectors.set(sector, buf);
        }
        for (let i = from, j = srcAt; i < to; i++, j++) buf[i] &= data[j];
        this.dirty.add(sector);
      });
      this.stats.bytesWritten += n;
    });
  }

  /** Arms the injector: the Nth mutating operation from now loses power as `mode` says. */
  armPowerCut(plan: PowerCutPlan): void {
    if (!Number.isInteger(plan.at) || plan.at < 1) throw new RangeError(`power cut point ${plan.at} must be >= 1`);
    this.plan = { ...plan, remaining: plan.at };
  }

  disarm(): void {
    this.plan = undefined;
  }

  get armed(): boolean {
    return this.plan !== undefined;
  }

  sectorErases(sector: number): number {
    return this.eraseCounts[sector] ?? 0;
  }

  /** Writes the flash image to its backing file (when file-backed). Cheap when nothing changed. */
  sync(): void {
    if (!this.file || this.dirty.size === 0) return;
    if (this.fd === undefined) {
      this.fd = fs.openSync(this.file, fs.existsSync(this.file) ? 'r+' : 'w+');
      // A fresh file must read as erased flash everywhere, not as zeros.
      if (fs.fstatSync(this.fd).size !== this.size) for (let s = 0; s < this.sectorCount; s++) this.dirty.add(s);
    }
    for (const sector of this.dirty) {
      const data = this.sectors.get(sector) ?? Buffer.alloc(SECTOR_SIZE, 0xff);
      fs.writeSync(this.fd, data, 0, SECTOR_SIZE, sector * SECTOR_SIZE);
    }
    this.dirty.clear();
  }

  /** Releases the backing file (the flash stays usable; the file is reopened on the next write). */
  close(): void {
    if (this.fd === undefined) return;
    fs.closeSync(this.fd);
    this.fd = undefined;
  }

  /** The single choke point of every erase and write: counters, tracing and the power-cut injector. */
  private mutate(kind: FlashOp['kind'], offset: number, length: number, apply: (fraction?: number) => void): void {
    const op: FlashOp = { kind, seq: ++this.opSeq, offset, length };
    this.onOperation?.(op);
    const plan = this.plan;
    const cut = plan !== undefined && --plan.remaining === 0;
    if (cut) this.plan = undefined;
    if (kind === 'erase') this.stats.erases++;
    else this.stats.writes++;
    if (cut && plan.mode === 'before') throw new PowerCut(op, 'before');
    if (cut && plan.mode === 'torn') {
      apply(plan.fraction ?? Math.random());
      this.sync();
      throw new PowerCut(op, 'torn');
    }
    apply();
    this.sync();
    if (cut) throw new PowerCut(op, 'after');
  }

  private eraseSector(sector: number): void {
    this.sectors.delete(sector);
    this.dirty.add(sector);
    const n = ++this.eraseCounts[sector];
    if (n > this.stats.maxSectorErases) this.stats.maxSectorErases = n;
  }

  /** A sector whose erase was interrupted: some bits set, the rest whatever they were. */
  private scrambleSector(sector: number): void {
    const buf = this.sectors.get(sector) ?? Buffer.alloc(SECTOR_SIZE, 0xff);
    for (let i = 0; i < SECTOR_SIZE; i++) buf[i] |= (i * 0x9e + sector) & 0xff & (i % 3 === 0 ? 0xff : 0x5a);
    this.sectors.set(sector, buf);
    this.dirty.add(sector);
  }

  private forEachSector(offset: number, length: number, fn: (sector: number, from: number, to: number, at: number) => void): void {
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const sector = Math.floor(pos / SECTOR_SIZE);
      const from = pos - sector * SECTOR_SIZE;
      const to = Math.min(SECTOR_SIZE, end - sector * SECTOR_SIZE);
      fn(sector, from, to, pos - offset);
      pos += to - from;
    }
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`flash access 0x${offset.toString(16)}+${length} outside 0..0x${this.size.toString(16)}`);
    }
  }

  private load(file: string): void {
    if (!fs.existsSync(file)) {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      return;
    }
    const fd = fs.openSync(file, 'r');
    try {
      const buf = Buffer.alloc(SECTOR_SIZE);
      for (let s = 0; s < this.sectorCount; s++) {
        const n = fs.readSync(fd, buf, 0, SECTOR_SIZE, s * SECTOR_SIZE);
        if (n === 0) break;
        let erased = true;
        for (let i = 0; i < n; i++) if (buf[i] !== 0xff) { erased = false; break; }
        if (!erased) {
          const copy = Buffer.alloc(SECTOR_SIZE, 0xff);
          buf.copy(copy, 0, 0, n);
          this.sectors.set(s, copy);
        }
      }
    } finally {
      fs.closeSync(fd);
    }
  }
}
