import net from 'node:net';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { measureLink, startShapingProxy } from './helpers/shaping-proxy.js';

// The shaping proxy is a measuring instrument for the link benchmarks, so it is checked against what
// it was asked for. Loosely: it can never be faster than asked (rate at most a little over, delay
// at least the delay), and on a loaded machine it may be slower, so the other bound is generous.
const cases = [
  { name: 'cellular-like', profile: { rateBps: 1_000_000, delayMs: 80 }, bulk: 96 * 1024 },
  { name: 'Wi-Fi-like', profile: { rateBps: 20_000_000, delayMs: 5 }, bulk: 1024 * 1024 },
];

for (const c of cases) {
  t.test(`${c.name}: rate and one-way delay are what was asked`, async (t) => {
    const m = await measureLink(c.profile, c.bulk);
    t.ok(m.rateBps <= c.profile.rateBps * 1.1, `rate ${Math.round(m.rateBps)} bit/s is not above ${c.profile.rateBps}`);
    t.ok(m.rateBps >= c.profile.rateBps * 0.5, `rate ${Math.round(m.rateBps)} bit/s is at least half of ${c.profile.rateBps}`);
    t.ok(m.delayMs >= c.profile.delayMs * 0.97, `one-way delay ${m.delayMs.toFixed(1)} ms is not below ${c.profile.delayMs}`);
    t.ok(m.delayMs <= c.profile.delayMs * 1.5 + 20, `one-way delay ${m.delayMs.toFixed(1)} ms is near ${c.profile.delayMs}`);
  });
}

t.test('a stall holds bytes (nothing closes) until it ends, then they arrive in order', async (t) => {
  const echo = net.createServer((s) => s.on('data', (d) => s.write(d)));
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  const proxy = await startShapingProxy({ port: (echo.address() as AddressInfo).port }, { rateBps: 10_000_000, delayMs: 1 });
  const sock = net.connect(proxy.port, '127.0.0.1');
  await new Promise<void>((r) => sock.once('connect', () => r()));
  const got: number[] = [];
  const all = new Promise<void>((resolve) => sock.on('data', (d: Buffer) => {
    got.push(...d);
    if (got.length === 3) resolve();
  }));
  const t0 = performance.now();
  proxy.stall(300);
  sock.write(Buffer.from([1]));
  sock.write(Buffer.from([2]));
  sock.write(Buffer.from([3]));
  await all;
  t.ok(performance.now() - t0 >= 295, 'nothing came back during the stall');
  t.same(got, [1, 2, 3], 'in order');
  t.equal(proxy.connections(), 1, 'the connection stayed open');
  sock.destroy();
  await proxy.close();
  await new Promise<void>((r) => echo.close(() => r()));
});
