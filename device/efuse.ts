import type { Flash } from './flash.js';
import type { Partition } from './layout.js';

/**
 * The anti-rollback security counter. On an ESP32 it lives in eFuse bits that can be burned but
 * never cleared; here it is a flash sector that is never erased, holding 8-byte entries
 * (u32 value, u32 ~value). The counter is the largest well-formed entry, so it can only go up, and
 * a torn entry (value and complement disagree) is ignored. 512 raises fit, far beyond any product.
 */
const ENTRY = 8;

export class SecurityCounter {
  constructor(private readonly flash: Flash, private readonly part: Partition) {}

  get value(): number {
    let max = 0;
    const data = this.flash.read(this.part.offset, this.part.size);
    for (let pos = 0; pos + ENTRY <= data.length; pos += ENTRY) {
      const v = data.readUInt32LE(pos);
      const inv = data.readUInt32LE(pos + 4);
      if (v === 0xffffffff && inv === 0xffffffff) break;
      if ((v ^ inv) >>> 0 === 0xffffffff && v > max) max = v;
    }
    return max;
  }

  /** Raises the counter to `to` (never lowers it). */
  raise(to: number): void {
    if (!Number.isInteger(to) || to < 0 || to > 0xfffffffe) throw new RangeError(`security version ${to} out of range`);
    if (to <= this.value) return;
    const data = this.flash.read(this.part.offset, this.part.size);
    for (let pos = 0; pos + ENTRY <= data.length; pos += ENTRY) {
      if (data.readUInt32LE(pos) === 0xffffffff && data.readUInt32LE(pos + 4) === 0xffffffff) {
        const e = Buffer.alloc(ENTRY);
        e.writeUInt32LE(to, 0);
        e.writeUInt32LE(~to >>> 0, 4);
        this.flash.write(this.part.offset + pos, e);
        return;
      }
    }
    throw new Error('security counter eFuse area exhausted');
  }
}
