/**
 * The link between a MicroPython node's worker thread and the thread that owns its MQTT connection.
 * Python runs synchronously in the worker (as on a board), so messages reach it through a ring
 * buffer in shared memory and requests (connect, subscribe, clean reset) wait on an Atomics word.
 *
 * Ring record: u32 record length, u16 topic length, topic bytes, payload bytes.
 */
export const RING_BYTES = 256 * 1024;

/** Int32 slots of the control array. */
export const Ctl = {
  /** Bumped after every ring write and link change: the worker's idle() waits on it. */
  rxSeq: 0,
  /** Answer to the worker's pending request: 0 waiting, 1 done, 2 failed. */
  reply: 1,
  /** 1 while the MQTT connection is up. */
  link: 2,
  head: 3,
  tail: 4,
  used: 5,
  /** Set by the owner to cut power at the worker's next flash operation or idle. */
  cut: 6,
  /** Set by the owner to n > 0: the n-th flash operation from now is torn in half and power is cut. */
  cutIn: 7,
} as const;
export const CTL_SLOTS = 8;

/** Worker exit codes. */
export const Exit = { reset: 10, powerCut: 11, watchdog: 12, crashed: 13 } as const;

export interface WorkerConfig {
  flashDir: string;
  /** Directories whose .py files are loaded into /lib (the package and the host port). */
  libDirs: string[];
  slot: number;
  ctl: SharedArrayBuffer;
  ring: SharedArrayBuffer;
  /** Cut power at this flash write (1-based count since boot), tearing that write in half. */
  cutAtFlashOp?: number;
  /** Versions whose self-test fails, or hangs until the watchdog resets the chip. */
  selfTestFail: string[];
  selfTestHang: string[];
  /** Versions whose application raises at start. */
  crashAtStart: string[];
}

export type WorkerEvent =
  | { t: 'log'; line: string }
  | { t: 'connect'; clientId: string }
  | { t: 'subscribe'; topic: string; qos: number }
  | { t: 'publish'; topic: string; payload: Uint8Array; qos: number }
  | { t: 'disconnect' }
  | { t: 'reset' }
  | { t: 'peak'; bytes: number }
  | { t: 'flashOps'; count: number };

export function ringWrite(ctl: Int32Array, ring: Uint8Array, topic: string, payload: Uint8Array): boolean {
  const t = Buffer.from(topic);
  const len = 6 + t.length + payload.length;
  if (RING_BYTES - Atomics.load(ctl, Ctl.used) < len) return false;
  const rec = Buffer.alloc(len);
  rec.writeUInt32LE(len, 0);
  rec.writeUInt16LE(t.length, 4);
  t.copy(rec, 6);
  rec.set(payload, 6 + t.length);
  let head = Atomics.load(ctl, Ctl.head);
  const first = Math.min(len, RING_BYTES - head);
  ring.set(rec.subarray(0, first), head);
  if (first < len) ring.set(rec.subarray(first), 0);
  head = (head + len) % RING_BYTES;
  Atomics.store(ctl, Ctl.head, head);
  Atomics.add(ctl, Ctl.used, len);
  Atomics.add(ctl, Ctl.rxSeq, 1);
  Atomics.notify(ctl, Ctl.rxSeq);
  return true;
}

export function ringRead(ctl: Int32Array, ring: Uint8Array): { topic: string; payload: Uint8Array } | undefined {
  if (Atomics.load(ctl, Ctl.used) === 0) return undefined;
  const tail = Atomics.load(ctl, Ctl.tail);
  const take = (at: number, n: number): Buffer => {
    const out = Buffer.alloc(n);
    const first = Math.min(n, RING_BYTES - at);
    out.set(ring.subarray(at, at + first), 0);
    if (first < n) out.set(ring.subarray(0, n - first), first);
    return out;
  };
  const hdr = take(tail, 6);
  const len = hdr.readUInt32LE(0);
  const rec = take(tail, len);
  const tlen = rec.readUInt16LE(4);
  Atomics.store(ctl, Ctl.tail, (tail + len) % RING_BYTES);
  Atomics.sub(ctl, Ctl.used, len);
  return { topic: rec.subarray(6, 6 + tlen).toString(), payload: rec.subarray(6 + tlen) };
}
