import t from 'tap';
import { SimClock } from '../device/lora/sim-clock.js';

const opts = { warp: 1, jump: true, settleMs: 5, epochMs: 0 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('jumps to the next timer once quiet; a handed-off message holds time until it arrived', async (t) => {
  const free = new SimClock(opts);
  let fired = false;
  free.after(3_600_000, () => (fired = true));
  await sleep(60);
  t.ok(fired, 'an hour of virtual time passes in milliseconds when nothing is in flight');
  free.stop();

  const clock = new SimClock(opts);
  const shared = clock.asUnixClock();
  let at = -1;
  shared.after(3_600_000, () => (at = clock.now()));
  shared.handoff();
  await sleep(60);
  t.equal(at, -1, 'no jump while a message to the other side is in flight');
  t.ok(clock.now() < 1000, `virtual time crawled at real speed (${clock.now().toFixed(0)} ms)`);
  shared.arrived();
  await sleep(60);
  t.ok(at >= 3_600_000 && at < 3_601_000, `once it arrived, time jumps to the timer (${at.toFixed(0)} ms)`);
  clock.stop();
});

t.test('a message that never arrives holds the clock for at most 2 s of real time', async (t) => {
  const clock = new SimClock(opts);
  const shared = clock.asUnixClock();
  let fired = false;
  shared.after(3_600_000, () => (fired = true));
  shared.handoff();
  await sleep(2300);
  t.ok(fired, 'the hold lapsed and the clock jumped');
  clock.stop();
});

t.test('handoff is a no-op until a component shares the clock', async (t) => {
  const clock = new SimClock(opts);
  let fired = false;
  clock.handoff();
  clock.after(3_600_000, () => (fired = true));
  await sleep(60);
  t.ok(fired, 'a simulator alone (ferry lns-sim against a remote agent) never waits for arrivals');
  clock.stop();
});
