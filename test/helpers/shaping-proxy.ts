import net from 'node:net';
import type { AddressInfo } from 'node:net';

/**
 * A TCP proxy that behaves like a slow, long link: each direction is a serializer at a fixed rate
 * (bytes leave one after another, `rate` bits per second) followed by a one-way propagation delay
 * with optional jitter, and can be stalled for a while (a fade: bytes are held, nothing closes).
 * Both directions are shaped alike, each with its own serializer, as on a full-duplex link.
 *
 * Departure times are computed on a virtual clock (the previous departure plus this piece's
 * serialization time), so late timers do not accumulate into a slower link; delivery order is kept
 * (jitter never reorders a TCP stream). When more than `bufferBytes` wait for the serializer the
 * sending socket is paused, so a sender sees backpressure as it would from a real bottleneck
 * instead of an unbounded queue.
 */
export interface LinkProfile {
  /** Link rate in bits per second, each direction. */
  rateBps: number;
  /** One-way propagation delay in ms. */
  delayMs: number;
  /** Each piece's delay varies by up to ± this many ms (uniform), never reordering. Default 0. */
  jitterMs?: number;
  /** Bytes queued at the serializer before the sender is paused. Default: 64 KiB or 1 s of the link rate, whichever is smaller but at least 16 KiB. */
  bufferBytes?: number;
}

export interface ShapingProxy {
  port: number;
  url: string;
  profile: LinkProfile;
  /** Bytes delivered in each direction (up = client → target). */
  bytes: { up: number; down: number };
  /** Holds every byte in both directions for `ms` (a fade), then lets them go at link rate. */
  stall(ms: number): void;
  dropAll(): void;
  connections(): number;
  close(): Promise<void>;
}

/** Largest piece serialized as one unit: small enough that a burst does not leave as one lump. */
const SEGMENT = 1460;

interface Pending {
  data: Buffer;
  deliverAt: number;
}

/** One direction of one connection. */
class ShapedPipe {
  private readonly queue: Pending[] = [];
  private head = 0;
  private lastDeparture = 0;
  private lastDelivery = 0;
  private queuedBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private paused = false;

  constructor(
    private readonly from: net.Socket,
    private readonly to: net.Socket,
    private readonly link: LinkProfile,
    private readonly holdUntil: () => number,
    private readonly random: () => number,
    private readonly onDeliver: (n: number) => void,
  ) {
    from.on('data', (d: Buffer) => this.accept(d));
  }

  private get buffer(): number {
    return this.link.bufferBytes ?? Math.max(16 * 1024, Math.min(64 * 1024, this.link.rateBps / 8));
  }

  private accept(d: Buffer): void {
    const now = performance.now();
    const bytesPerMs = this.link.rateBps / 8 / 1000;
    for (let off = 0; off < d.length; off += SEGMENT) {
      const piece = d.subarray(off, Math.min(d.length, off + SEGMENT));
      // A stall holds the serializer: nothing departs before it ends.
      const start = Math.max(now, this.lastDeparture, this.holdUntil());
      const departure = start + piece.length / bytesPerMs;
      this.lastDeparture = departure;
      const jitter = this.link.jitterMs ? (this.random() * 2 - 1) * this.link.jitterMs : 0;
      const deliverAt = Math.max(this.lastDelivery, departure + Math.max(0, this.link.delayMs + jitter));
      this.lastDelivery = deliverAt;
      this.queue.push({ data: piece, deliverAt });
    }
    // What still waits to be serialized, in bytes: beyond the buffer, the sender must wait.
    this.queuedBytes = Math.max(0, (this.lastDeparture - now) * bytesPerMs);
    if (this.queuedBytes > this.buffer && !this.paused) {
      this.paused = true;
      this.from.pause();
    }
    this.arm();
  }

  private arm(): void {
    if (this.timer || this.head >= this.queue.length) return;
    const wait = Math.max(0, this.queue[this.head].deliverAt - performance.now());
    this.timer = setTimeout(() => this.flush(), wait);
  }

  private flush(): void {
    this.timer = undefined;
    const now = performance.now();
    const out: Buffer[] = [];
    while (this.head < this.queue.length && this.queue[this.head].deliverAt <= now + 0.5) out.push(this.queue[this.head++].data);
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
    if (out.length > 0 && !this.to.destroyed) {
      const piece = out.length === 1 ? out[0] : Buffer.concat(out);
      this.onDeliver(piece.length);
      this.to.write(piece);
    }
    if (this.paused) {
      const bytesPerMs = this.link.rateBps / 8 / 1000;
      if (Math.max(0, (this.lastDeparture - now) * bytesPerMs) <= this.buffer / 2) {
        this.paused = false;
        this.from.resume();
      }
    }
    this.arm();
  }

  /** A stall ended or began: departures already scheduled move behind it. */
  reschedule(): void {
    const hold = this.holdUntil();
    if (hold <= performance.now()) return;
    let shift = 0;
    for (let k = this.head; k < this.queue.length; k++) {
      const p = this.queue[k];
      if (p.deliverAt < hold + this.link.delayMs) shift = Math.max(shift, hold + this.link.delayMs - p.deliverAt);
      p.deliverAt += shift;
    }
    this.lastDeparture = Math.max(this.lastDeparture, hold);
    this.lastDelivery += shift;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.arm();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

export async function startShapingProxy(target: { host?: string; port: number }, profile: LinkProfile, random: () => number = Math.random): Promise<ShapingProxy> {
  if (!(profile.rateBps > 0) || !(profile.delayMs >= 0)) throw new RangeError(`link profile needs rateBps > 0 and delayMs >= 0, got ${JSON.stringify(profile)}`);
  const pairs = new Set<{ a: net.Socket; b: net.Socket; pipes: ShapedPipe[] }>();
  const bytes = { up: 0, down: 0 };
  let holdUntil = 0;
  const server = net.createServer((client) => {
    client.setNoDelay(true);
    const upstream = net.connect({ host: target.host ?? '127.0.0.1', port: target.port });
    upstream.setNoDelay(true);
    const hold = () => holdUntil;
    const pipes = [
      new ShapedPipe(client, upstream, profile, hold, random, (n) => (bytes.up += n)),
      new ShapedPipe(upstream, client, profile, hold, random, (n) => (bytes.down += n)),
    ];
    const pair = { a: client, b: upstream, pipes };
    pairs.add(pair);
    const end = () => {
      for (const p of pipes) p.stop();
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', end);
    upstream.on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const dropAll = () => {
    for (const p of [...pairs]) {
      for (const pipe of p.pipes) pipe.stop();
      p.a.destroy();
      p.b.destroy();
    }
    pairs.clear();
  };
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    profile,
    bytes,
    stall(ms) {
      holdUntil = Math.max(holdUntil, performance.now() + ms);
      for (const p of pairs) for (const pipe of p.pipes) pipe.reschedule();
    },
    dropAll,
    connections: () => pairs.size,
    async close() {
      dropAll();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * Measures a shaping proxy from outside: one-way delay (half the round trip of a small echo) and
 * rate (a bulk transfer's bytes over its duration, after the first byte arrived). For the bench's
 * self-check and the proxy's own test; `bulkBytes` should take at least a few hundred ms at the rate.
 */
export async function measureLink(profile: LinkProfile, bulkBytes: number): Promise<{ rateBps: number; delayMs: number }> {
  // An echo server behind the proxy: what the client sends comes back through both directions.
  const echo = net.createServer((s) => {
    s.setNoDelay(true);
    s.on('data', (d) => s.write(d));
    s.on('error', () => {});
  });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  const proxy = await startShapingProxy({ port: (echo.address() as AddressInfo).port }, profile);
  const sock = net.connect(proxy.port, '127.0.0.1');
  sock.setNoDelay(true);
  await new Promise<void>((r) => sock.once('connect', () => r()));
  try {
    // Round trips of one byte, the smallest of five: serialization of 1 byte is negligible.
    let best = Infinity;
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      sock.write(Buffer.from([i]));
      await new Promise<void>((r) => sock.once('data', () => r()));
      best = Math.min(best, performance.now() - t0);
    }
    // Bulk: bytes echoed back cross the link twice, each direction with its own serializer, so the
    // echo arrives at the link rate once the pipe is full.
    let got = 0;
    let first = 0;
    let firstBytes = 0;
    const done = new Promise<number>((resolve) => {
      const onData = (d: Buffer) => {
        if (got === 0) {
          first = performance.now();
          firstBytes = d.length;
        }
        got += d.length;
        if (got >= bulkBytes) {
          sock.off('data', onData);
          resolve(performance.now());
        }
      };
      sock.on('data', onData);
    });
    sock.write(Buffer.alloc(bulkBytes, 0x5a));
    const last = await done;
    return { rateBps: ((bulkBytes - firstBytes) * 8) / ((last - first) / 1000), delayMs: best / 2 };
  } finally {
    sock.destroy();
    await proxy.close();
    await new Promise<void>((r) => echo.close(() => r()));
  }
}
