import t, { type Test } from 'tap';
import { startBroker, type RunningBroker } from '../broker/index.js';
import { connect, end, nextMessage, publish, subscribe } from './helpers/broker-support.js';

/** Outside the ferry prefix the plugin must be an ordinary MQTT 3.1.1 broker. */
async function exercise(t: Test, broker: RunningBroker) {
  const a = await connect(broker.url, { clientId: 'plain-a' });
  const b = await connect(broker.url, { clientId: 'plain-b', username: 'someone', password: 'anything' });
  t.same(await subscribe(b, 'home/+/temp', 1), [1], 'wildcard subscription granted at QoS 1');
  const got = nextMessage(b, (tp) => tp === 'home/kitchen/temp');
  await publish(a, 'home/kitchen/temp', '21.5', { qos: 1 });
  const m = await got;
  t.equal(m.payload.toString(), '21.5', 'QoS 1 message delivered');
  await publish(a, 'home/hall/light', 'on', { qos: 1, retain: true });
  const late = await connect(broker.url, { clientId: 'plain-late' });
  const retained = nextMessage(late, (tp) => tp === 'home/hall/light');
  await subscribe(late, 'home/hall/#', 0);
  const r = await retained;
  t.equal(r.payload.toString(), 'on', 'retained message delivered to a late subscriber');
  t.ok(r.retain, 'with the retain flag');
  const q0 = nextMessage(b, (tp) => tp === 'home/attic/temp');
  a.publish('home/attic/temp', '9', { qos: 0 });
  t.equal((await q0).payload.toString(), '9', 'QoS 0 delivered');
  await publish(a, 'home/hall/light', '', { qos: 1, retain: true });
  await end(a, b, late);
}

t.test('plain aedes (no plugin)', async (t) => {
  const broker = await startBroker();
  t.teardown(() => broker.close());
  await exercise(t, broker);
});

t.test('aedes with the ferry plugin, anonymous allowed', async (t) => {
  const broker = await startBroker({ ferry: { allowAnonymous: true } });
  t.teardown(() => broker.close());
  await exercise(t, broker);
});
