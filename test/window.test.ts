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

t.test('only missing chunks are resent (gaps at once, the rest when overdue); acked ones never', async (t) => {
  const w = new TransferWindow(10, 8, new RttEstimator(rttCfg));
  drain(w, 0);
  const b = new ChunkBitmap(10);
  for (const i of [0, 1, 3, 5, 6, 7]) b.set(i);
  w.onAck(2, b.slice(2, 64), 20); // 2 and 4 missing, though sent before chunks the node has
  t.same(drain(w, 20), [2, 4, 8, 9], 'the gaps go again at once (in-order delivery: they were lost), then new chunks');
  t.equal(w.expire(50), 0, 'nothing overdue before the RTO');
  t.equal(w.expire(1000), 4, 'after the RTO the unanswered ones are lost');
  const resent = drain(w, 1000);
  t.same(resent.filter((i) => b.has(i)), [], 'no acked chunk is resent');
  t.same(resent, [2, 4, 8, 9]);
  t.equal(w.retransmits, 6);
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

t.test('a Hello keeps chunks sent within about a round trip in flight (they are on their way), older ones are resent', async (t) => {
  const rtt = new RttEstimator({ initialRto: 100, minRto: 50, maxRto: 3_600_000 });
  const w = new TransferWindow(20, 8, rtt);
  t.same(drain(w, 0), [0, 1, 2, 3, 4, 5, 6, 7]);
  w.onAck(4, undefined, 10); // a 10 ms round trip; 4..7 still in flight, sent at 0
  t.equal(rtt.inTransit, 30, 'twice the 10 ms round trip, plus 10 ms');
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
  // The node answers: what is still unacked gets a fresh timer (its queued acks may follow), and
  // the next timeout resends a window again instead of probing.
  w.onAck(8, undefined, 800);
  t.equal(w.outstanding, 8, '8..15 count as in flight again, with a fresh timer');
  t.equal(w.expire(800 + rtt.rto), 8, 'an ack ended the probing: the next timeout declares all overdue lost');
  t.equal(drain(w, 900 + rtt.rto).length, 8);
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

t.test('a chunk sent before one the node acks, and missing from that ack, was lost: it goes again at once', async (t) => {
  const hour = 3_600_000;
  const w = new TransferWindow(40, 16, new RttEstimator({ initialRto: hour, minRto: hour, maxRto: hour }));
  t.same(drain(w, 0), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
  // The node got 0..7 and 12..15 but not 8..11 (sent before 12..15): in-order delivery says lost.
  const b = new ChunkBitmap(40);
  for (const i of [0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15]) b.set(i);
  w.onAck(8, b.slice(8, 64), 5);
  t.equal(w.outstanding, 0, 'nothing left in flight: 8..11 are known lost, not awaited for an hour');
  t.same(drain(w, 5).slice(0, 4), [8, 9, 10, 11], 'they go first');
  // A chunk the ack does not describe (beyond its bitmap) is not presumed lost.
  const w2 = new TransferWindow(40, 16, new RttEstimator({ initialRto: hour, minRto: hour, maxRto: hour }));
  drain(w2, 0);
  w2.onAck(4, undefined, 5);
  t.equal(w2.outstanding, 12, '4..15 are simply still in flight');
});

t.test('acks delayed by an outage: chunks a timer declared lost meanwhile are not sent again if the node had them', async (t) => {
  const rtt = new RttEstimator(rttCfg);
  const w = new TransferWindow(40, 16, rtt);
  drain(w, 0); // 0..15; the node gets them all, but its ack is stuck behind a dead link
  t.equal(w.expire(100), 16, 'the timer declares them lost');
  t.same(drain(w, 100), [0, 1, 2, 3, 4, 5, 6, 7], 'and resends what the halved window allows');
  // The link is back: the node's queued ack says it holds 0..15.
  w.onAck(16, undefined, 500);
  const next = drain(w, 500);
  t.equal(next[0], 16, 'sending continues with new chunks');
  t.notOk(next.some((i) => i < 16), '8..15 are not sent again');
});

