import mqtt from 'mqtt';
import t from 'tap';
import { IdentityStore, startBroker } from '../broker/index.js';
import { Backoff, isPermanentRefusal, keepReconnecting, untilConnected } from '../agent/reconnect.js';
import { freePort, tmpDir } from './helpers/broker-support.js';

/**
 * The root cause of issue 10 item 8, in process: a client ended while its reconnect loop had an
 * attempt scheduled was revived on the stores end() had closed, and the next CONNACK threw
 * `Cannot read properties of null (reading 'forEach')` in MQTT.js's store, killing the process.
 */
t.test('an ended client is never reconnected, even with an attempt already scheduled', async (t) => {
  const port = await freePort();
  const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000 });
  client.on('error', () => {});
  const scheduled = new Promise<void>((resolve) => keepReconnecting(client, new Backoff({ initialMs: 40, maxMs: 40 }, () => 1), () => resolve()));
  await scheduled; // refused; the next attempt is due in 40 ms
  await client.endAsync(true);
  const connects: string[] = [];
  const broker = await startBroker({ port, host: '127.0.0.1', setup: (aedes) => void aedes.on('client', (c) => connects.push(c.id)) });
  t.teardown(() => broker.close());
  // Several backoff periods with the broker up: an attempt would have connected (and crashed) by now.
  await new Promise((r) => setTimeout(r, 400));
  t.same(connects, [], 'no connection from the ended client');
  t.notOk(client.connected, 'it stays ended');
});

t.test('untilConnected waits through refused connections and rejects only a refusal by the broker', async (t) => {
  const port = await freePort();
  const store = IdentityStore.open(tmpDir('reconnect'));
  const agent = await store.add('agent', 'rc-agent');
  const connectTo = (password: string) => {
    const c = mqtt.connect(`mqtt://127.0.0.1:${port}`, { protocolVersion: 4, reconnectPeriod: 0, username: 'rc-agent', password });
    c.on('error', () => {});
    const stop = keepReconnecting(c, new Backoff({ initialMs: 20, maxMs: 100 }));
    return { c, stop };
  };
  const good = connectTo(agent.password);
  const bad = connectTo('wrong-wrong-wrong-wrong');
  const waited: string[] = [];
  const goodReady = untilConnected(good.c, (err) => waited.push(err.message));
  const badReady = untilConnected(bad.c);
  badReady.catch(() => {});
  await new Promise<void>((resolve) => good.c.once('close', () => resolve()));
  const broker = await startBroker({ port, host: '127.0.0.1', ferry: { store } });
  t.teardown(async () => {
    good.stop();
    bad.stop();
    await Promise.all([good.c.endAsync(true), bad.c.endAsync(true)]);
    await broker.close();
    store.close();
  });
  await goodReady;
  t.match(waited, [/ECONNREFUSED/], 'told once that the broker is not up yet');
  await t.rejects(badReady, /the broker at mqtt:\/\/127\.0\.0\.1:\d+ refused the connection: Bad username or password/, 'bad credentials reject');
  t.ok(isPermanentRefusal(Object.assign(new Error('x'), { code: 5 })), 'not authorised is permanent');
  t.notOk(isPermanentRefusal(Object.assign(new Error('x'), { code: 3 })), 'server unavailable is not');
  t.notOk(isPermanentRefusal(Object.assign(new Error('x'), { code: 'ECONNREFUSED' })), 'a refused TCP connection is not');
});
