import t from 'tap';
import { DEFAULT_RTT, RttEstimator } from '../agent/rtt.js';
import { TransferWindow } from '../agent/window.js';
import { simulateTransfer } from './helpers/link-sim.js';

// Sans-IO, fake clock: a transfer's start over shaped links (test/helpers/link-sim.ts). Before any
// round trip is measured, the first chunk's ack waits for the node's whole first ack batch (8 chunks)
// to cross the link: 8 × 16 KiB at 1 Mbit/s is over a second, longer than RFC 6298's initial 1 s.

const KiB = 1024;
/** Chunks per ms of a link of `bps` bits per second carrying `chunkBytes`-byte chunks. */
const rate = (bps: number, chunkBytes: number) => bps / 8 / chunkBytes / 1000;

const links = [
  { name: 'cellular (1 Mbit/s, 80 ms), 16 KiB chunks', bps: 1_000_000, delayMs: 80, chunkBytes: 16 * KiB },
  { name: 'VSAT (2 Mbit/s, 300 ms), 16 KiB chunks', bps: 2_000_000, delayMs: 300, chunkBytes: 16 * KiB },
  { name: 'cellular (1 Mbit/s, 80 ms), 4 KiB chunks', bps: 1_000_000, delayMs: 80, chunkBytes: 4 * KiB },
  { name: 'a 300 kbit/s link (40 ms), 16 KiB chunks', bps: 300_000, delayMs: 40, chunkBytes: 16 * KiB },
];

for (const l of links) {
  t.test(`${l.name}: nothing is resent at the start, nor later (nothing was lost)`, async (t) => {
    const count = Math.ceil((1024 * KiB) / l.chunkBytes);
    const r = simulateTransfer(count, 128, { chunksPerMs: rate(l.bps, l.chunkBytes), delayMs: l.delayMs, chunkBytes: l.chunkBytes });
    t.equal(r.retransmitsBeforeFirstAck, 0, `no chunk went twice before the first ack (at ${Math.round(r.firstAckAt)} ms)`);
    t.equal(r.retransmits, 0, 'no chunk went twice in the whole transfer');
  });
}

t.test('without the chunk size the first timer is RFC 6298 alone, and big chunks on a slow link are resent spuriously', async (t) => {
  const chunkBytes = 16 * KiB;
  const r = simulateTransfer(64, 128, { chunksPerMs: rate(1_000_000, chunkBytes), delayMs: 80 });
  t.ok(r.retransmitsBeforeFirstAck > 0, `${r.retransmitsBeforeFirstAck} chunks went again before the first ack (at ${Math.round(r.firstAckAt)} ms)`);
});

t.test('the first timer allows for the first ack batch at the initial rate; the first sample replaces it', async (t) => {
  const rtt = new RttEstimator(DEFAULT_RTT);
  new TransferWindow(64, 128, rtt, undefined, 16 * KiB);
  // 8 chunks of 16 KiB at 32,000 B/s: 4,096 ms on top of the initial 1 s.
  t.equal(rtt.dataRto, 1000 + 4096);
  t.equal(rtt.rto, 1000, 'control messages (Offers, Activates) keep the RFC timer');
  rtt.backoff();
  t.equal(rtt.dataRto, 2 * (1000 + 4096), 'a timeout before any sample backs the whole of it off');
  rtt.sample(1500);
  t.equal(rtt.dataRto, rtt.rto, 'measured: the samples include the batch wait');
  t.equal(rtt.rto, 1500 + 4 * 750);
  new TransferWindow(64, 128, rtt, undefined, 16 * KiB);
  t.equal(rtt.dataRto, rtt.rto, 'a later transfer to the same node starts from what was measured');
});

t.test('a payload shorter than an ack batch allows only for its own chunks', async (t) => {
  const rtt = new RttEstimator(DEFAULT_RTT);
  new TransferWindow(2, 128, rtt, undefined, 16 * KiB);
  t.equal(rtt.dataRto, 1000 + 1024);
});
