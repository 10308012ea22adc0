import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import mqtt from 'mqtt';
import { startBroker } from '../broker/server.js';
import { demoImage } from '../harness/images.js';
import { topics } from '../shared/topics.js';
import { runFerry, startFerry } from './helpers/ferry-process.js';
import { startPlayer } from './helpers/lns-player.js';
import { TestLoraNode } from './helpers/lora-node.js';

const APP = '6d1b2c3a-0000-4000-8000-00000000cafe';

t.test('ferry agent --lns: usage errors name the flag', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-lora-cli-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cases: [string[], RegExp][] = [
    [['--lns', 'chirpstack'], /--lns needs --lns-broker/],
    [['--lns', 'chirpstack', '--lns-broker', 'mqtt://127.0.0.1:1'], /--lns needs --application/],
    [['--lns-broker', 'mqtt://127.0.0.1:1'], /--lns-broker only makes sense with --lns/],
    [['--lns', 'chirpstack', '--lns-broker', 'mqtt://127.0.0.1:1', '--application', APP, '--lora-block', '256'], /--lora-block must be an integer 1\.\.255/],
    [['--lns', 'chirpstack', '--lns-broker', 'mqtt://127.0.0.1:1', '--application', APP, '--lns-password', 'x'], /--lns-password needs --lns-username/],
  ];
  for (const [extra, re] of cases) {
    const r = await runFerry(['agent', '--broker', 'mqtt://127.0.0.1:1', '--data-dir', dir, ...extra]);
    t.not(r.code, 0, `${extra.join(' ')}: non-zero exit`);
    t.match(r.err, re, `${extra.join(' ')}: says why`);
  }
});

t.test('ferry agent --lns chirpstack: an unreachable LNS broker is one line and a non-zero exit', async (t) => {
  const broker = await startBroker();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-lora-cli-'));
  t.teardown(async () => {
    await broker.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const r = await runFerry(['agent', '--broker', broker.url, '--data-dir', dir, '--lns', 'chirpstack', '--lns-broker', 'mqtt://127.0.0.1:1', '--application', APP]);
  t.not(r.code, 0);
  t.match(r.err, /ChirpStack application .*(ECONNREFUSED|no connection)/);
});

t.test('ferry agent --lns chirpstack publishes a LoRa node\'s retained status on the gateway broker', async (t) => {
  const broker = await startBroker();
  const lns = await startBroker();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-lora-cli-'));
  const agent = startFerry(['agent', '--broker', broker.url, '--data-dir', dir, '--lns', 'chirpstack', '--lns-broker', lns.url, '--application', APP, '--region', 'US915']);
  const player = await startPlayer(lns.url, APP, 3, 902_300_000);
  const c = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
  t.teardown(async () => {
    await c.endAsync();
    await player.close();
    await agent.stop();
    await lns.close();
    await broker.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await agent.waitFor(/LoRa: chirpstack adapter up, region US915/);
  const dev = '0011223344556699';
  const node = new TestLoraNode(dev, 'lora-cli', '3.0.0', demoImage('lora-cli', '3.0.0', 100));
  const statusTopic = topics().status(dev);
  await c.subscribeAsync(statusTopic);
  const got = new Promise<Record<string, unknown>>((resolve) => c.on('message', (topic, payload) => topic === statusTopic && resolve(JSON.parse(payload.toString()))));
  await player.uplink(dev, [node.hello()]);
  const status = await got;
  t.equal(status.id, dev);
  t.equal(status.hw, 'lora-cli');
  t.equal(status.runningVersion, '3.0.0');
  t.equal(status.state, 'idle');
});
