import type { Duplex } from 'node:stream';

/**
 * A size cap on MQTT packets, enforced from the fixed header before aedes sees a byte.
 *
 * aedes 1.x has no packet size limit and mqtt-packet buffers a packet's whole declared remaining
 * length (up to 256 MiB) before any hook runs, so a client that announces a huge CONNECT pins that
 * memory before it has proved anything. The guard reads each packet's fixed header as the bytes
 * arrive and closes the connection as soon as a declared length exceeds the cap: a small one until
 * the client is authenticated, the largest legitimate ferry message afterwards.
 */

/** Where the scanner is in the byte stream: the pure state of {@link scanFrames}. */
export type FrameScan =
  | { at: 'type' }
  | { at: 'length'; value: number; multiplier: number; bytes: number }
  | { at: 'body'; left: number };

export type FrameVerdict = { ok: true } | { ok: false; reason: string };

export const FRAME_START: FrameScan = { at: 'type' };

/**
 * Advances the scan over `chunk`. Returns the new state, or a refusal naming the first packet whose
 * declared remaining length is above `maxRemaining` (or whose length field is malformed).
 */
export function scanFrames(state: FrameScan, chunk: Uint8Array, maxRemaining: number): { state: FrameScan; verdict: FrameVerdict } {
  let s = state;
  let i = 0;
  while (i < chunk.length) {
    switch (s.at) {
      case 'type':
        i += 1;
        s = { at: 'length', value: 0, multiplier: 1, bytes: 0 };
        break;
      case 'length': {
        const b = chunk[i++];
        const value = s.value + (b & 0x7f) * s.multiplier;
        const bytes = s.bytes + 1;
        if (b & 0x80) {
          // MQTT 3.1.1 §2.2.3: at most four length bytes.
          if (bytes >= 4) return { state: s, verdict: { ok: false, reason: 'malformed remaining length (more than 4 bytes)' } };
          s = { at: 'length', value, multiplier: s.multiplier * 128, bytes };
          break;
        }
        if (value > maxRemaining) return { state: s, verdict: { ok: false, reason: `packet of ${value} bytes declared, limit ${maxRemaining}` } };
        s = value === 0 ? FRAME_START : { at: 'body', left: value };
        break;
      }
      case 'body': {
        const take = Math.min(s.left, chunk.length - i);
        i += take;
        s = s.left === take ? FRAME_START : { at: 'body', left: s.left - take };
        break;
      }
    }
  }
  return { state: s, verdict: { ok: true } };
}

export interface FrameLimits {
  /** Largest remaining length accepted once the client is authenticated. */
  maxPacket: number;
  /** Largest remaining length accepted before authentication (the CONNECT itself). */
  maxPacketBeforeAuth: number;
  /** Bytes a connection may send in total before it is authenticated. */
  maxBytesBeforeAuth: number;
}

export interface FrameGuard {
  readonly authenticated: boolean;
  /** Raises the cap to `maxPacket`: called when the broker accepts the client's credentials. */
  authenticate(): void;
}

const guards = new WeakMap<object, FrameGuard>();

/** The guard on a connection (aedes' `client.conn`), if it has one. */
export function frameGuardOf(conn: object): FrameGuard | undefined {
  return guards.get(conn);
}

/**
 * Puts the guard on a socket. It sits on the socket's own `push` (what net/tls call with each chunk
 * read from the kernel), so aedes still gets the socket itself as its connection: the TLS peer
 * certificate, writableLength for the delivery guard and the socket's backpressure are unchanged,
 * and no byte is copied. `on.refused` is called once, before the socket is destroyed.
 */
export function guardFrames(socket: Duplex, limits: FrameLimits, on: { refused(reason: string): void; authenticated?(): void }): FrameGuard {
  let state = FRAME_START;
  let authenticated = false;
  let before = 0;
  let refused = false;
  const push = socket.push.bind(socket);
  const guard: FrameGuard = {
    get authenticated() {
      return authenticated;
    },
    authenticate() {
      if (authenticated) return;
      authenticated = true;
      on.authenticated?.();
    },
  };
  const refuse = (reason: string) => {
    refused = true;
    on.refused(reason);
    socket.destroy();
    return false;
  };
  socket.push = (chunk: unknown, encoding?: BufferEncoding) => {
    if (refused) return false;
    if (chunk === null || chunk === undefined || !(chunk instanceof Uint8Array)) return push(chunk, encoding);
    const { state: next, verdict } = scanFrames(state, chunk, authenticated ? limits.maxPacket : limits.maxPacketBeforeAuth);
    if (!verdict.ok) return refuse(authenticated ? verdict.reason : `${verdict.reason} before authentication`);
    if (!authenticated) {
      before += chunk.length;
      if (before > limits.maxBytesBeforeAuth) return refuse(`${before} bytes before authentication, limit ${limits.maxBytesBeforeAuth}`);
    }
    state = next;
    return push(chunk, encoding);
  };
  guards.set(socket, guard);
  return guard;
}
