import type { ArchName } from './arch/index.js';

/**
 * What a firmware image's own bytes say about how to predict it (ferry diff --arch auto): the
 * instruction set, the address its first byte is loaded at, and the range of words that are likely
 * pointers into it. Recognised: ESP8266/ESP32-family app images (0xE9 header), ELF files, Cortex-M
 * images (vector table first) and arm64 Linux Images; anything else is `none`.
 */
export interface ImageLayout {
  arch: ArchName;
  /** Address of the image's first byte (0 when unknown: relative branches do not need it). */
  loadAddress: number;
  /** Words w with lo <= w < hi are predicted as pointers; [0, 0] for none. */
  pointerRange: [number, number];
  /** ESP8266 pointer classes (format version 2's transform bit 0) instead of a range. */
  espPointers: boolean;
  /** How the image was recognised, for humans. */
  format: string;
}

const NONE: ImageLayout = { arch: 'none', loadAddress: 0, pointerRange: [0, 0], espPointers: false, format: 'unrecognised' };

const u32 = (b: Uint8Array, at: number): number => (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0;
const u16 = (b: Uint8Array, at: number): number => b[at] | (b[at + 1] << 8);

/** ESP32-family chip ids (image header bytes 12..13) whose cores are RISC-V; the others are Xtensa. */
const ESP_RISCV_CHIPS = new Set([5, 12, 13, 16, 18, 20, 23]);

function espImage(b: Uint8Array): ImageLayout | undefined {
  // Magic, 1..16 segments, a known SPI mode (0..5), an entry point in the 0x40/0x42 code regions.
  if (b.length < 24 || b[0] !== 0xe9 || b[1] === 0 || b[1] > 16 || b[2] > 5) return undefined;
  const entry = u32(b, 4);
  if (entry >>> 24 !== 0x40 && entry >>> 24 !== 0x42) return undefined;
  // ESP8266: no extended header; entry in IRAM 0x401xxxxx, and the irom0 text that follows the
  // IRAM segments is mapped at 0x40200000 + its flash offset.
  if (entry >>> 20 === 0x401) {
    return { arch: 'xtensa', loadAddress: 0x40200000, pointerRange: [0, 0], espPointers: true, format: 'ESP8266 image' };
  }
  const chip = u16(b, 12);
  if (chip >= 0x40) return undefined;
  if (ESP_RISCV_CHIPS.has(chip)) return { arch: 'riscv', loadAddress: 0, pointerRange: [0x3c000000, 0x44000000], espPointers: false, format: `ESP32-family image, chip id ${chip} (RISC-V)` };
  return { arch: 'xtensa', loadAddress: 0, pointerRange: [0x3f400000, 0x40400000], espPointers: false, format: `ESP32-family image, chip id ${chip} (Xtensa)` };
}

const ELF_MACHINES: Record<number, ArchName> = { 94: 'xtensa', 40: 'thumb2', 183: 'aarch64', 243: 'riscv' };

function elf(b: Uint8Array): ImageLayout | undefined {
  if (b.length < 52 || b[0] !== 0x7f || b[1] !== 0x45 || b[2] !== 0x4c || b[3] !== 0x46 || b[5] !== 1) return undefined;
  const machine = u16(b, 18);
  const arch = ELF_MACHINES[machine] ?? 'none';
  let range: [number, number] = [0, 0];
  // 32-bit ELF: pointers are 32-bit words into the PT_LOAD segments' addresses.
  if (b[4] === 1) {
    const phoff = u32(b, 28);
    const phentsize = u16(b, 42);
    const phnum = u16(b, 44);
    let lo = 0xffffffff;
    let hi = 0;
    for (let i = 0; i < phnum && phoff + (i + 1) * phentsize <= b.length && phentsize >= 32; i++) {
      const p = phoff + i * phentsize;
      if (u32(b, p) !== 1) continue; // PT_LOAD
      const vaddr = u32(b, p + 8);
      const memsz = u32(b, p + 20);
      if (memsz === 0) continue;
      lo = Math.min(lo, vaddr);
      hi = Math.max(hi, Math.min(0xffffffff, vaddr + memsz));
    }
    if (lo < hi) range = [lo, hi];
  }
  return { arch, loadAddress: 0, pointerRange: range, espPointers: false, format: `ELF, e_machine ${machine}` };
}

/** Cortex-M: initial stack pointer in SRAM, then reset/NMI/HardFault handlers: odd (Thumb) code addresses. */
function cortexM(b: Uint8Array, size: number): ImageLayout | undefined {
  if (b.length < 64) return undefined;
  const sp = u32(b, 0);
  if (sp < 0x10000000 || sp >= 0x40000000 || sp & 3) return undefined;
  let min = 0xffffffff;
  let max = 0;
  for (let i = 1; i < 16; i++) {
    const v = u32(b, i * 4);
    if (v === 0) continue;
    if (!(v & 1) || v >= 0x10000000) return undefined;
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  if (min === 0xffffffff || u32(b, 4) === 0) return undefined;
  // Flash is almost always a 64 KiB multiple; the handlers live in the image.
  const load = (min & ~0xffff) >>> 0;
  if (max - load >= Math.max(size, 0x10000) + 0x10000) return undefined;
  const end = load + Math.ceil(size / 0x10000) * 0x10000;
  return { arch: 'thumb2', loadAddress: load, pointerRange: [load, end], espPointers: false, format: `Cortex-M vector table, flash at 0x${load.toString(16)}` };
}

/** arm64 Linux Image header: magic "ARM\x64" at 0x38. */
function arm64Image(b: Uint8Array): ImageLayout | undefined {
  if (b.length < 64 || u32(b, 0x38) !== 0x644d5241) return undefined;
  return { arch: 'aarch64', loadAddress: 0, pointerRange: [0, 0], espPointers: false, format: 'arm64 Linux Image' };
}

/** Raw AArch64 code: RET (0xD65F03C0) words at 4-byte alignment, at least one per 8 KiB. */
function arm64Raw(b: Uint8Array): ImageLayout | undefined {
  let rets = 0;
  for (let i = 0; i + 4 <= b.length; i += 4) if (u32(b, i) === 0xd65f03c0) rets++;
  if (rets < 2 || rets * 8192 < b.length) return undefined;
  return { arch: 'aarch64', loadAddress: 0, pointerRange: [0, 0], espPointers: false, format: `raw AArch64 code (${rets} RET instructions)` };
}

export function detectImage(image: Uint8Array, size = image.length): ImageLayout {
  return espImage(image) ?? elf(image) ?? cortexM(image, size) ?? arm64Image(image) ?? arm64Raw(image) ?? NONE;
}

/** The layout to use for an explicitly chosen instruction set: detection's if it agrees, else a bare one. */
export function layoutFor(arch: ArchName, image: Uint8Array, size = image.length): ImageLayout {
  if (arch === 'none') return { ...NONE, format: 'not examined (arch none)' };
  const found = detectImage(image, size);
  if (found.arch === arch) return found;
  return { ...NONE, arch, format: `${arch} (forced; image looks like: ${found.format})` };
}
