import net from 'node:net';

/**
 * Hand-made MQTT 3.1.1 bytes on raw sockets, for the attack tests: what an attacker sends is not
 * what MQTT.js would let us send (a CONNECT announcing 200 MB, a flood from another loopback address).
 */
export function remainingLength(n: number): Buffer {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

function str(s: string | Buffer): Buffer {
  const b = Buffer.isBuffer(s) ? s : Buffer.from(s, 'utf8');
  const len = Buffer.alloc(2);
  len.writeUInt16BE(b.length);
  return Buffer.concat([len, b]);
}

export function connectPacket(o: { clientId: string; username?: string; password?: string; keepalive?: number }): Buffer {
  const flags = 0x02 | (o.username !== undefined ? 0x80 : 0) | (o.password !== undefined ? 0x40 : 0);
  const ka = Buffer.alloc(2);
  ka.writeUInt16BE(o.keepalive ?? 30);
  const body = Buffer.concat([
    str('MQTT'), Buffer.from([4, flags]), ka, str(o.clientId),
    ...(o.username !== undefined ? [str(o.username)] : []),
    ...(o.password !== undefined ? [str(o.password)] : []),
  ]);
  return Buffer.concat([Buffer.from([0x10]), remainingLength(body.length), body]);
}

export function publishPacket(topic: string, payloadLength: number, opts: { retain?: boolean } = {}): { header: Buffer; total: number } {
  const t = str(topic);
  const len = t.length + payloadLength;
  return { header: Buffer.concat([Buffer.from([0x30 | (opts.retain ? 1 : 0)]), remainingLength(len), t]), total: len };
}

export function openSocket(port: number, localAddress?: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, localAddress });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Resolves when the socket is closed by the other side (or errors), with what it received. */
export function closedBy(s: net.Socket): Promise<Buffer> {
  const got: Buffer[] = [];
  s.on('data', (d: Buffer) => got.push(d));
  return new Promise((resolve) => {
    s.on('error', () => {});
    s.once('close', () => resolve(Buffer.concat(got)));
  });
}

/** Sends a CONNECT; resolves with the CONNACK return code, or 'closed' if the broker hung up first. */
export async function rawConnect(port: number, o: Parameters<typeof connectPacket>[0] & { localAddress?: string }): Promise<number | 'closed'> {
  const s = await openSocket(port, o.localAddress);
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0);
    s.on('error', () => {});
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 4 && buf[0] === 0x20) {
        resolve(buf[3]);
        s.destroy();
      }
    });
    s.once('close', () => resolve('closed'));
    s.write(connectPacket(o));
  });
}

/**
 * Writes `header` then filler as fast as the socket takes it, up to `limit` bytes, until the broker
 * closes the connection. Resolves with the bytes written and whether the broker closed it.
 */
export async function announceAndStream(port: number, header: Buffer, limit: number, chunk = 64 * 1024, localAddress?: string): Promise<{ written: number; closedByBroker: boolean }> {
  const s = await openSocket(port, localAddress);
  const filler = Buffer.alloc(chunk, 0x61);
  let written = 0;
  let closed = false;
  const done = new Promise<void>((resolve) => {
    s.on('error', () => {});
    s.once('close', () => {
      closed = true;
      resolve();
    });
  });
  s.write(header);
  written += header.length;
  while (!closed && written < limit) {
    const ok = s.write(filler);
    written += filler.length;
    if (!ok) await Promise.race([new Promise((r) => s.once('drain', r)), done]);
  }
  const closedByBroker = closed;
  s.destroy();
  await done;
  return { written, closedByBroker };
}
