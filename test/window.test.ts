import t from 'tap';
import { RttEstimator } from '../agent/rtt.js';
import { TransferWindow } from '../agent/window.js';
import { ChunkBitmap } from '../shared/bitmap.js';

const rttCfg = { initialRto: 100, minRto: 50, maxRto: 10_000 };

function drain(w: TransferWindow, now: number): number[] {
  const out: number[] = [];
  for (let i = w.next(now); i !== undefined; i = w.next(now)) out.push(i);
  return out;
}

t.test('sends in index order up to the window, then waits for acks', async (t) => {
  const w = new TransferWindow(20, 8, new RttEstimator(rttCfg));
  t.same(drain(w, 0), [0, 1, 2, 3, 4, 5, 6, 7]);
  t.equal(w.onAck(4, undefined, 10), 4);
  t.same(drain(w, 10), [8, 9, 10, 11]);
});

t.test('only chunks both missing and overdue are resent; acked ones never', async (t) => {
  const w = new TransferWindow(10, 8, new RttEstimator(rttCfg));
  drain(w, 0);
  const b = new ChunkBitmap(10);
  for (const i of [0, 1, 3, 5, 6, 7]) b.set(i);
  w.onAck(2, b.slice(2, 64), 20); // 2 and 4 missing
  t.same(drain(w, 20), [8, 9], 'room freed by acks goes to new chunks first');
  t.equal(w.expire(50), 0, 'nothing overdue before the RTO');
  t.ok(w.expire(1000) >= 2, 'after the RTO the missing chunks are lost');
  const resent = drain(w, 1000);
  t.same(resent.filter((i) => b.has(i)), [], 'no acked chunk is resent');
  t.ok(resent.includes(2) && resent.includes(4));
  t.equal(w.retransmits, resent.length);
});

t.test('RTT samples follow Karn: retransmitted chunks give none', async (t) => {
  const rtt = new RttEstimator(rttCfg);
  const w = new TransferWindow(4, 4, rtt);
  drain(w, 0);
  w.onAck(1, undefined, 30);
  t.equal(rtt.smoothed, 30);
  w.expire(10_000);
  drain(w, 10_000);
  w.onAck(4, undefined, 10_005);
  t.equal(rtt.smoothed, 30, 'resent chunks do not pollute the estimate');
  t.ok(w.complete);
});

t.test('loss halves the window, never below half the node window', async (t) => {
  const w = new TransferWindow(100, 16, new RttEstimator(rttCfg));
  drain(w, 0);
  t.equal(w.congestionWindow, 16);
  w.expire(5000);
  t.equal(w.congestionWindow, 8);
  w.expire(5000 + 10);
  t.equal(w.congestionWindow, 8, 'one cut per RTO');
  drain(w, 20_000);
  w.expire(40_000);
  t.equal(w.congestionWindow, 8, 'floor is half the node window');
  w.onAck(30, undefined, 40_001);
  t.equal(w.congestionWindow, 9, 'acks grow it again');
});

t.test('resync from a node bitmap forgets what was in flight', async (t) => {
  const w = new TransferWindow(10, 4, new RttEstimator(rttCfg));
  drain(w, 0);
  const held = new ChunkBitmap(10);
  held.set(0);
  held.set(2);
  w.resync(held.toBytes());
  t.same(drain(w, 1), [1, 3, 4, 5]);
});

t.test('RTO backs off on timeout and recovers on a sample', async (t) => {
  const rtt = new RttEstimator(rttCfg);
  rtt.sample(100);
  const base = rtt.rto;
  rtt.backoff();
  rtt.backoff();
  t.equal(rtt.rto, base * 4);
  rtt.sample(100);
  t.ok(rtt.rto <= base + 1);
  for (let i = 0; i < 30; i++) rtt.backoff();
  t.equal(rtt.rto, 10_000, 'clamped at maxRto');
});
