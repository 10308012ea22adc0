import t from 'tap';
import mqtt from 'mqtt';
import { decodeEventsMessage, EVENT_LIMITS, type HistoryResponse } from '../shared/events.js';
import { makeWorld } from './helpers/world.js';

// The agent's event log over MQTT against a real aedes broker: live batches, history pages, bad
// requests, and a flood that must neither take the agent down nor flood the link.

t.test('live events are batched and bounded; history pages come back on request; bad requests get a reason', async (t) => {
  const world = await makeWorld();
  const op = await mqtt.connectAsync(world.broker.url, { protocolVersion: 4, clientId: 'op-test', reconnectPeriod: 0 });
  t.teardown(async () => {
    await op.endAsync();
    await world.close();
  });
  const name = world.agent.name;
  const live: { events: { seq: number; kind: string }[]; dropped?: number }[] = [];
  const responses: HistoryResponse[] = [];
  let onMessage = () => {};
  op.on('message', (topic, payload) => {
    const m = decodeEventsMessage(payload);
    if (!m) return;
    if (topic === `ferry/a/${name}/events`) live.push(m);
    else if (topic === `ferry/a/${name}/events/res/op-test`) responses.push(m as HistoryResponse);
    onMessage();
  });
  const until = (cond: () => boolean) =>
    new Promise<void>((resolve) => {
      onMessage = () => cond() && resolve();
      onMessage();
    });
  await op.subscribeAsync([`ferry/a/${name}/events`, `ferry/a/${name}/events/res/op-test`], { qos: 1 });

  // A flood: 20,000 events in one go, far above what the live feed sends (maxBatch per flush).
  const store = world.agent.store;
  for (let i = 0; i < 20_000; i++) store.event(`flood-${i % 50}`, 'flood', `event ${i} ${'x'.repeat(i % 300)}`);
  store.event('marker', 'after-flood', 'the last one');
  await until(() => live.reduce((n, m) => n + m.events.length + (m.dropped ?? 0), 0) >= 20_001);
  const sent = live.reduce((n, m) => n + m.events.length, 0);
  const dropped = live.reduce((n, m) => n + (m.dropped ?? 0), 0);
  t.ok(live.length <= 3, `the flood went out as ${live.length} message(s), not one per event`);
  t.ok(sent <= 200 * live.length, `${sent} events sent live, at most maxBatch per message`);
  t.equal(sent + dropped, 20_001, 'every event is either sent or counted as dropped');
  t.ok(live.every((m) => JSON.stringify(m).length <= EVENT_LIMITS.maxMessageBytes + 100), 'each live message within the size cap');

  // History still has every row: page back through one device.
  const ask = async (req: object) => {
    const before = responses.length;
    await op.publishAsync('ferry/e/req/op-test', JSON.stringify(req), { qos: 1 });
    await until(() => responses.length > before);
    return responses[responses.length - 1];
  };
  const page1 = await ask({ v: 1, id: 'p1', device: 'flood-7', limit: 50 });
  t.equal(page1.id, 'p1', 'the answer names the request');
  t.equal(page1.events.length, 50, 'fifty events of flood-7');
  t.ok(page1.events.every((e) => e.device === 'flood-7'), 'only that device');
  t.ok(page1.more, 'and says there are more');
  t.ok(page1.events.every((e, i, a) => i === 0 || a[i - 1].seq < e.seq), 'oldest first');
  const page2 = await ask({ v: 1, id: 'p2', device: 'flood-7', limit: 50, before: page1.events[0].seq });
  t.ok(page2.events.every((e) => e.seq < page1.events[0].seq), 'the next page is older');
  const big = await ask({ v: 1, id: 'big', limit: 5000 });
  t.ok(big.events.length <= EVENT_LIMITS.maxHistory, `a limit of 5000 is capped (${big.events.length} events)`);
  t.ok(JSON.stringify(big).length <= EVENT_LIMITS.maxMessageBytes + 100, 'and the answer stays within the size cap');
  t.equal(big.events[big.events.length - 1].kind, 'after-flood', 'the newest event is the last');

  const bad = await ask({ v: 1, id: 'bad', limit: -1 });
  t.match(bad.error, /limit must be a positive integer/, 'a bad field gets a reason');
  const notJson = responses.length;
  await op.publishAsync('ferry/e/req/op-test', Buffer.from('not json'), { qos: 1 });
  await until(() => responses.length > notJson);
  t.match(responses[responses.length - 1].error, /not JSON/, 'so does a payload that is not JSON');

  // A flood of requests: answered at most at the request rate's burst, and the agent keeps serving.
  const feed = world.agent.events;
  const handled = feed.answered + feed.refused;
  await Promise.all(Array.from({ length: 200 }, (_, i) => op.publishAsync('ferry/e/req/op-test', JSON.stringify({ v: 1, id: `r${i}`, limit: 1 }), { qos: 1 })));
  while (feed.answered + feed.refused < handled + 200) await new Promise((r) => setTimeout(r, 20));
  t.ok(feed.refused >= 150, `200 requests at once: ${feed.refused} refused by the request rate limit`);
  store.event('marker', 'still-alive', 'after the request flood');
  await until(() => live.some((m) => m.events.some((e) => e.kind === 'still-alive')));
  t.pass('live events still flow after both floods');
});
