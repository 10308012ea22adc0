import t from 'tap';
import mqtt from 'mqtt';
import { LnsSim } from '../device/lora/lns-sim.js';
import { decodeUp, encodeDown } from '../shared/lora/control.js';
import { generateOperatorKey } from '../shared/manifest.js';
import { startPlainBroker } from '../harness/lora/plain-broker.js';


t.test('hostile downlink commands are one-line refusals; the simulator keeps serving', async (t) => {
  const broker = await startPlainBroker();
  const logs: string[] = [];
  const sim = new LnsSim({
    brokerUrl: broker.url, appId: 'app1', nodes: 1, hw: 'lora-dev', version: '1.0.0', trust: [generateOperatorKey().publicKey],
    downLoss: { kind: 'iid', p: 0 }, seed: 1, clock: { warp: 1, jump: true, settleMs: 20 }, log: (_l, m) => logs.push(m),
  });
  const c = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
  const events: { topic: string; body: Record<string, unknown> }[] = [];
  c.on('message', (topic, p) => events.push({ topic, body: JSON.parse(p.toString()) }));
  await c.subscribeAsync('application/app1/device/+/event/+');
  await sim.start();
  const dev = [...sim.devices.keys()][0];
  const down = (body: string | object, eui = dev, cmd = 'down') => c.publishAsync(`application/app1/device/${eui}/command/${cmd}`, typeof body === 'string' ? body : JSON.stringify(body));
  const until = async (pred: () => boolean) => {
    for (let i = 0; i < 400 && !pred(); i++) await new Promise((r) => setTimeout(r, 25));
    return pred();
  };
  t.ok(await until(() => events.some((e) => e.topic.endsWith('/event/up'))), 'the node says hello on boot');
  const hello = events.find((e) => e.topic.endsWith('/event/up'))!.body;
  t.match(hello, { deviceInfo: { devEui: dev, applicationId: 'app1' }, fPort: 10, dr: 5, fCnt: 1 });
  t.equal(decodeUp(Buffer.from(hello.data as string, 'base64')).type, 'hello');

  await down('{not json');
  await down({ devEui: dev, fPort: 10, data: '!!notbase64' });
  await down({ devEui: 'ffffffffffffffff', fPort: 10, data: 'AA==' });
  await down({ devEui: dev, fPort: 0, data: 'AA==' });
  await down({ devEui: dev, fPort: 10, data: 'AA==' }, '0000000000000001');
  await down({ devEui: dev, fPort: 10, data: 'AA==' }, dev, 'flush');
  await down({ devEui: dev, fPort: 10, data: Buffer.alloc(243).toString('base64') });
  await c.publishAsync('application/app1/multicast-group/xyz/command/down', '{}');
  await c.publishAsync(`application/app1/device/${dev}/command/down`, Buffer.alloc(5000, 0x20));
  t.ok(await until(() => sim.counters.refused >= 9), `all 9 refused (${sim.counters.refused})`);
  for (const re of [/not JSON/, /"data" is not base64/, /does not match the topic/, /"fPort" 0 is not 1..223/, /unknown devEui 0000000000000001/, /unknown command type "flush"/, /243 B exceeds DR5's 242 B/, /multicast group "xyz"/, /5000 B exceeds 4096 B/]) {
    t.ok(logs.some((l) => re.test(l) && !l.includes('\n')), `one-line log for ${re}`);
  }
  t.ok(await until(() => events.some((e) => e.topic.endsWith('/event/log') && e.body.code === 'DOWNLINK_PAYLOAD_SIZE')), 'oversize → log event DOWNLINK_PAYLOAD_SIZE');

  // Still serving: an lquery (Class A) is answered with an lhello after the node's next uplink.
  const ups = () => events.filter((e) => e.topic.endsWith('/event/up')).length;
  const before = ups();
  await down({ devEui: dev, confirmed: false, fPort: 10, data: Buffer.from(encodeDown({ type: 'query' })).toString('base64'), id: 'q-1' });
  t.ok(await until(() => events.some((e) => e.topic.endsWith('/event/txack') && e.body.queueItemId === 'q-1')), 'txack carries the queue item id');
  t.ok(await until(() => ups() > before), 'the node answers');
  await c.endAsync();
  await sim.stop();
  await broker.close();
});
