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

t.test("resync replaces what the sender believed: a node that lost acked chunks gets them again", async (t) => {
  const w = new TransferWindow(8, 4, new RttEstimator(rttCfg));
  drain(w, 0);
  w.onAck(4, undefined, 10);
  t.equal(w.received, 4);
  // Power cut before the node saved chunks 2 and 3: its Hello says it holds 0 and 1 only.
  w.resync(Buffer.from([0b11]));
  t.equal(w.received, 2, 'the node is the source of truth');
  t.same(drain(w, 20), [2, 3, 4, 5]);
  w.resyncFromAck(6, undefined);
  t.equal(w.received, 6, 'an Offer-answer Ack replaces it too');
});

t.test('a Hello keeps chunks sent within the last RTO in flight (they are on their way), older ones are resent', async (t) => {
  const w = new TransferWindow(20, 8, new RttEstimator(rttCfg)); // RTO 100 ms
  t.same(drain(w, 0), [0, 1, 2, 3, 4, 5, 6, 7]);
  w.onAck(4, undefined, 10); // 4..7 still in flight, sent at 0
  t.same(drain(w, 150), [8, 9, 10, 11], 'sent at 150, after the node came back');
  w.resync(Buffer.from([0x0f]), 160);
  t.equal(w.outstanding, 4, 'the four young chunks stay in flight');
  t.same(drain(w, 160), [4, 5, 6, 7], 'the old ones (lost with the old link) go again, nothing else');
});

t.test('repeated silent timeouts send one probe per RTO instead of a burst', async (t) => {
  const rtt = new RttEstimator(rttCfg);
  const w = new TransferWindow(40, 16, rtt);
  t.equal(drain(w, 0).length, 16);
  t.equal(w.expire(100), 16, 'first timeout: everything overdue is lost');
  t.equal(drain(w, 100).length, 8, 'and resent up to the halved window');
  // No ack: the next timeout (after the doubled RTO) probes with the oldest chunk only.
  t.equal(w.expire(100 + rtt.rto), 1);
  t.same(drain(w, 300), [0], 'one probe: the oldest missing chunk');
  t.equal(w.outstanding, 8, 'the others wait for an answer, still in flight');
  t.equal(w.expire(300 + rtt.rto), 1, 'one probe per timeout while silent');
  t.equal(drain(w, 700).length, 1);
  // The node answers: normal sending resumes.
  w.onAck(8, undefined, 800);
  t.ok(drain(w, 800).length >= 8, 'an ack ends the probing');
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

t.test('chunks declared lost go again at once, even while younger ones fill the halved window', async (t) => {
  const rtt = new RttEstimator(rttCfg);
  const w = new TransferWindow(40, 16, rtt);
  t.same(drain(w, 0), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
  w.onAck(8, undefined, 10); // a 10 ms sample: the RTO drops to its 50 ms floor
  t.equal(rtt.rto, 50);
  t.same(drain(w, 40), [16, 17, 18, 19, 20, 21, 22, 23]);
  // 8..15 (sent at 0) expire; 16..23 (sent at 40) are still young and fill the halved window of 8.
  t.equal(w.expire(60), 8);
  t.equal(w.congestionWindow, 8);
  t.same(drain(w, 60), [8, 9, 10, 11, 12, 13, 14, 15], 'the lost chunks are not held back by the young ones');
  t.same(drain(w, 60), [], 'but nothing new goes beyond the window');
  // 16..23 expire 40 ms later, within the same RTO: the same loss event, no second halving or backoff.
  const rto = rtt.rto;
  t.equal(w.expire(40 + rto), 8);
  t.equal(rtt.rto, rto, 'no second backoff');
  t.equal(w.congestionWindow, 8);
});
