import t from 'tap';
import { FailureBackoff, RecentLogins, Semaphore, type AuthLimits } from '../broker/auth-guard.js';
import { FRAME_START, scanFrames, type FrameScan } from '../broker/frame-guard.js';
import { DEFAULT_LIMITS, parseLimitFlags, resolveLimits } from '../broker/limits.js';
import { RetainedQuota } from '../broker/retained-quota.js';

/** The pure parts of the broker's guards, table-driven: frame scanner, back-off, semaphore, retained quota, --limit. */

t.test('scanFrames reads remaining lengths across chunk boundaries and refuses oversize ones', async (t) => {
  const cases: { name: string; chunks: number[][]; max: number; ok: boolean; end?: FrameScan['at'] }[] = [
    { name: 'PINGREQ (length 0)', chunks: [[0xc0, 0x00]], max: 10, ok: true, end: 'type' },
    { name: 'two packets in one chunk', chunks: [[0x30, 0x02, 1, 2, 0xc0, 0x00]], max: 10, ok: true, end: 'type' },
    { name: 'body split over chunks', chunks: [[0x30, 0x05, 1], [2, 3], [4, 5]], max: 10, ok: true, end: 'type' },
    { name: 'length at the limit', chunks: [[0x30, 10]], max: 10, ok: true, end: 'body' },
    { name: 'length one above', chunks: [[0x30, 11]], max: 10, ok: false },
    { name: '200 MB CONNECT, length bytes split', chunks: [[0x10, 0x80], [0x84, 0xaf], [0x5f]], max: 1024, ok: false },
    { name: 'two-byte length 128 under a 1 KiB cap', chunks: [[0x10, 0x80, 0x01]], max: 1024, ok: true, end: 'body' },
    { name: 'five length bytes', chunks: [[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]], max: 1 << 30, ok: false },
    { name: 'oversize second packet', chunks: [[0xc0, 0x00, 0x30, 0x81, 0x01]], max: 128, ok: false },
  ];
  for (const c of cases) {
    let state = FRAME_START;
    let ok = true;
    for (const chunk of c.chunks) {
      const r = scanFrames(state, Uint8Array.from(chunk), c.max);
      state = r.state;
      if (!r.verdict.ok) {
        ok = false;
        break;
      }
    }
    t.equal(ok, c.ok, c.name);
    if (c.end) t.equal(state.at, c.end, `${c.name}: ends at ${c.end}`);
  }
  const big = scanFrames(FRAME_START, Uint8Array.from([0x10, 0x80, 0x84, 0xaf, 0x5f]), 1024);
  t.same(big.verdict, { ok: false, reason: 'packet of 200000000 bytes declared, limit 1024' }, 'the refusal names the declared size');
});

t.test('FailureBackoff: free failures, then a doubling back-off, bounded table, expiry', async (t) => {
  let now = 0;
  const limits: AuthLimits = { ...DEFAULT_LIMITS.auth, freeFailures: 2, backoffBaseMs: 1000, backoffMaxMs: 8000, maxAddresses: 3 };
  const b = new FailureBackoff(() => limits, () => now);
  const steps: { fail?: string; ok?: string; at?: number; addr: string; blocked: number }[] = [
    { fail: 'a', addr: 'a', blocked: 0 },
    { fail: 'a', addr: 'a', blocked: 0 },
    { fail: 'a', addr: 'a', blocked: 1000 },
    { fail: 'a', addr: 'a', blocked: 2000 },
    { fail: 'a', addr: 'b', blocked: 0 }, // a: 4000 now
    { fail: 'a', addr: 'a', blocked: 8000 },
    { fail: 'a', addr: 'a', blocked: 8000 },
    { at: 3000, addr: 'a', blocked: 5000 },
    { ok: 'a', addr: 'a', blocked: 0 },
  ];
  for (const s of steps) {
    if (s.at !== undefined) now = s.at;
    if (s.fail) b.failed(s.fail);
    if (s.ok) b.succeeded(s.ok);
    t.equal(b.blockedFor(s.addr), s.blocked, `${JSON.stringify(s)}`);
  }
  for (const a of ['w', 'x', 'y', 'z']) b.failed(a);
  t.equal(b.size, 3, 'the table keeps at most maxAddresses');
  for (let i = 0; i < 4; i++) b.failed('q');
  t.ok(b.blockedFor('q') > 0, 'q is backed off');
  now += 8000 + 1000 + 8000 + 1;
  t.equal(b.blockedFor('q'), 0, 'an entry quiet for longer than the maximum back-off is forgotten');
});

t.test('Semaphore: bounded concurrency and a bounded queue', async (t) => {
  const s = new Semaphore(() => ({ maxConcurrent: 2, maxWaiting: 1 }));
  const r1 = await s.acquire();
  const r2 = await s.acquire();
  let third: (() => void) | undefined;
  const p3 = s.acquire().then((r) => (third = r));
  t.equal(s.queued, 1);
  t.equal(await s.acquire(), undefined, 'a full queue refuses at once');
  r1!();
  r1!(); // releasing twice is harmless
  await p3;
  t.type(third, 'function', 'the queued one got the freed slot');
  r2!();
  third!();
  t.type(await s.acquire(), 'function');
});

t.test('RetainedQuota charges the last writer and credits overwrites and clears', async (t) => {
  const q = new RetainedQuota();
  const cap = 1000;
  t.ok(q.charge('node:a', cap, 't/1', 500).ok);
  t.equal(q.usedBy('node:a'), 500 + 3 + 64);
  t.notOk(q.charge('node:a', cap, 't/2', 500).ok, 'a second 500 bytes does not fit');
  t.ok(q.charge('node:a', cap, 't/1', 800).ok, 'overwriting its own topic counts only the new size');
  t.ok(q.charge('node:b', cap, 't/1', 10).ok, 'another writer takes the topic over');
  t.equal(q.usedBy('node:a'), 0, 'and the first writer is credited');
  t.ok(q.charge('node:b', cap, 't/1', 0).ok, 'an empty payload clears');
  t.equal(q.usedBy('node:b'), 0);
});

t.test('--limit flags', async (t) => {
  const l = resolveLimits(parseLimitFlags(['frames.maxPacket=70k', 'rate.node.rate=20', 'retained.node=1M', 'delivery.maxBacklog.node=512k']));
  t.equal(l.frames.maxPacket, 70 * 1024);
  t.same(l.rate.node, { rate: 20, burst: DEFAULT_LIMITS.rate.node.burst }, 'a rate keeps its default burst');
  t.equal(l.retained.node, 1024 * 1024);
  t.equal(l.delivery.maxBacklog.node, 512 * 1024);
  t.equal(l.delivery.maxBacklog.agent, DEFAULT_LIMITS.delivery.maxBacklog.agent);
  t.throws(() => parseLimitFlags(['frames.maxpacket=1']), /unknown limit "frames.maxpacket"/);
  t.throws(() => parseLimitFlags(['frames=1']), /unknown limit "frames"/);
  t.throws(() => parseLimitFlags(['frames.maxPacket=-1']), /expected NAME=NUMBER/);
  t.throws(() => parseLimitFlags(['constructor.name=1']), /unknown limit/);
  t.throws(() => parseLimitFlags(['__proto__=1']), /NAME=NUMBER|unknown limit/);
  t.throws(() => resolveLimits({ auth: { maxConcurrent: 0 } }), /auth.maxConcurrent must be at least 1/);
});

t.test('Semaphore priority and RecentLogins', async (t) => {
  const s = new Semaphore(() => ({ maxConcurrent: 1, maxWaiting: 4 }));
  const r = await s.acquire();
  const order: string[] = [];
  const a = s.acquire().then((rel) => (order.push('normal'), rel!()));
  const b = s.acquire(true).then((rel) => (order.push('priority'), rel!()));
  r!();
  await Promise.all([a, b]);
  t.same(order, ['priority', 'normal'], 'a priority waiter goes first');
  let now = 0;
  const recent = new RecentLogins(1000, () => 2, () => now);
  recent.add('a');
  recent.add('b');
  recent.add('c');
  t.notOk(recent.has('a'), 'bounded: the oldest is forgotten');
  t.ok(recent.has('c'));
  now = 1001;
  t.notOk(recent.has('c'), 'and entries expire');
});
