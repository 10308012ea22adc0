import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import mqtt from 'mqtt';
import { IdentityStore } from '../broker/identity-store.js';
import { tmpDir } from './helpers/broker-support.js';
import { ferrySync, startFerry } from './helpers/ferry-process.js';
import { startFerryServer } from './helpers/ferry-server.js';
import { parseExposition, raw } from './helpers/http-raw.js';

/** `ferry gateway --http` and `ferry agent --http` as a user runs them: real processes, real requests. */

const URL_LINE = /status page on (http:\/\/127\.0\.0\.1:\d+)\//;

t.test('ferry gateway --http 0 serves the page and metrics with broker figures; ferry agent --http serves the agent alone', async (t) => {
  const dir = tmpDir('http-cli');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const gw = await startFerryServer('gateway', ['--data-dir', path.join(dir, 'gw'), '--http', '0']);
  t.teardown(() => gw.stop());
  const base = (await gw.waitFor(URL_LINE))[1];
  await gw.waitFor(/agent connected/);
  t.equal((await raw(base, 'GET', '/')).status, 200, 'the page');

  const refused = await new Promise<string>((resolve) => {
    const c = mqtt.connect(gw.url, { username: 'nobody', password: 'not-a-real-password', reconnectPeriod: 0 });
    c.on('error', (e) => {
      c.end(true);
      resolve(e.message);
    });
  });
  t.match(refused, /Bad username or password/, 'an unknown identity is refused');
  const m = parseExposition((await raw(base, 'GET', '/metrics')).body);
  const value = (name: string, labels: Record<string, string> = {}) => m.samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
  t.equal(value('ferry_broker_clients', { role: 'agent' }), 1, "the gateway's own agent");
  t.equal(value('ferry_broker_auth_failures_total', { reason: 'badCredentials' }), 1, 'the refused login counted');
  t.equal(value('ferry_nodes', { state: 'idle' }), 0);

  const store = IdentityStore.open(path.join(dir, 'gw'));
  const password = 'agent-two-password-123456';
  await store.add('agent', 'site-b', { serves: ['*'], password });
  store.close();
  fs.writeFileSync(path.join(dir, 'pw'), `${password}\n`, { mode: 0o600 });
  const agent = startFerry(['agent', '--broker', gw.url, '--username', 'site-b', '--password-file', path.join(dir, 'pw'), '--data-dir', path.join(dir, 'agent'), '--http', '0']);
  t.teardown(() => agent.stop());
  const agentBase = (await agent.waitFor(URL_LINE))[1];
  await agent.waitFor(/agent connected/);
  const am = parseExposition((await raw(agentBase, 'GET', '/metrics')).body);
  t.ok(am.types.has('ferry_nodes') && am.types.has('ferry_relayed_bytes_total'), 'the agent alone has the agent figures');
  t.notOk([...am.types.keys()].some((k) => k.startsWith('ferry_broker_')), 'and no broker figures (it runs no broker)');
  t.equal(JSON.parse((await raw(agentBase, 'GET', '/api/status')).body).summary.agent, 'site-b');
  t.equal(await agent.stop(), 0, 'the agent stops cleanly on SIGTERM');
  t.equal(await gw.stop(), 0, 'the gateway stops cleanly on SIGTERM');
});

t.test('bad --http values exit 2; a taken port exits 1 in words', async (t) => {
  const dir = tmpDir('http-cli-bad');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const bad = ferrySync(['gateway', '--port', '0', '--data-dir', dir, '--http', '70000']);
  t.equal(bad.code, 2);
  t.match(bad.err, /--http must be 0\.\.65535, got 70000/);
  const taken = net.createServer();
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => taken.close());
  const port = (taken.address() as net.AddressInfo).port;
  const inUse = ferrySync(['gateway', '--port', '0', '--host', '127.0.0.1', '--data-dir', dir, '--http', String(port)]);
  t.equal(inUse.code, 1);
  t.match(inUse.err, new RegExp(`--http: port ${port} is in use on 127\\.0\\.0\\.1`));
  const again = ferrySync(['gateway', '--port', '0', '--host', '127.0.0.1', '--data-dir', dir, '--http', '0', '--http-host', '192.0.2.1']);
  t.equal(again.code, 1, 'an address not on this machine');
  t.match(again.err, /--http: --http-host 192\.0\.2\.1 is not an address of this machine/);
});
