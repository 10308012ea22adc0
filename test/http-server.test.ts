import net from 'node:net';
import t from 'tap';
import mqtt from 'mqtt';
import { escapeLabel, exposition } from '../agent/http/exposition.js';
import type { RolloutView } from '../agent/http/rollout-shape.js';
import type { NodeStatus } from '../agent/status.js';
import { untilStatus } from './helpers/world.js';
import { startHttpGateway } from './helpers/http-gateway.js';
import { parseExposition, raw, rawBytes, sse } from './helpers/http-raw.js';

/**
 * The status server of `ferry gateway --http` through real HTTP requests, beside a real ferry
 * broker (identities on), agent and simulated nodes: metrics after a real update, label escaping,
 * methods, paths, caps, and the live-update stream with many clients and a slow one.
 */

const HOSTILE = 'r"1\\x\n<img src=x onerror=alert(1)>';

function hostileRollout(): RolloutView {
  return {
    id: HOSTILE, hw: 'esp32-devkitc', version: '1.1.0', state: 'halted', reason: 'failures "above" 1\nthreshold', currentWave: 1,
    waves: [
      { index: 0, target: 1, nodes: 1, confirmed: 1, failed: 0, inProgress: 0, state: 'done' },
      { index: 1, target: 2, nodes: 2, confirmed: 0, failed: 1, inProgress: 1, state: 'halted' },
    ],
    failures: [{ device: 'node-3', outcome: 'rolledBack', reason: 'selfTestFailed', detail: '<b>boom</b>' }],
  };
}

t.test('exposition: HELP/TYPE per family, label values escaped, invalid names refused', async (t) => {
  t.equal(escapeLabel('a"b\\c\nd'), 'a\\"b\\\\c\\nd');
  const text = exposition([{ name: 'x_total', help: 'line\\one\nline two', type: 'counter', samples: [{ labels: { id: HOSTILE }, value: 3 }, { value: Infinity }] }]);
  t.equal(text, `# HELP x_total line\\\\one\\nline two\n# TYPE x_total counter\nx_total{id="r\\"1\\\\x\\n<img src=x onerror=alert(1)>"} 3\nx_total +Inf\n`);
  t.same(parseExposition(text).samples[0].labels, { id: HOSTILE }, 'a parser gets the original value back');
  t.throws(() => exposition([{ name: 'bad-name', help: '', type: 'gauge', samples: [] }]), /not a valid Prometheus name/);
  t.throws(() => exposition([{ name: 'ok', help: '', type: 'gauge', samples: [{ labels: { 'a-b': 'x' }, value: 1 }] }]), /label name "a-b"/);
});

t.test('metrics after a real update: nodes by state, bytes, chunks, acks, outcomes, verdicts, broker clients and refused logins', async (t) => {
  const g = await startHttpGateway({ nodes: 3, failSelfTest: 1 });
  t.teardown(() => g.close());
  for (const id of ['node-1', 'node-2', 'node-3']) await untilStatus(g.agent, id, () => true, 'hello');
  await g.publish('1.1.0', 40 * 1024);
  for (const id of ['node-1', 'node-2']) await untilStatus(g.agent, id, (s) => s.state === 'confirmed', 'confirmed');
  await untilStatus(g.agent, 'node-3', (s) => s.state === 'rolledBack', 'rolled back');
  const refused = await new Promise<string>((resolve) => {
    const c = mqtt.connect(g.broker.url, { username: 'node-1', password: 'wrong-password-0000', reconnectPeriod: 0, clientId: 'node-1' });
    c.on('error', (e) => {
      c.end(true);
      resolve(e.message);
    });
  });
  t.match(refused, /Bad username or password|Not authorized/i, 'the wrong password was refused');
  await new Promise<void>((resolve) => {
    // A CONNECT announcing 256 MB: the frame guard closes the socket on the fixed header.
    const s = net.connect(g.broker.port, '127.0.0.1', () => s.write(Buffer.from([0x10, 0xff, 0xff, 0xff, 0x7f])));
    s.on('close', () => resolve());
    s.on('error', () => {});
  });

  const res = await raw(g.http.url, 'GET', '/metrics');
  t.equal(res.status, 200);
  t.equal(res.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
  const m = parseExposition(res.body);
  const value = (name: string, labels: Record<string, string> = {}) =>
    m.samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
  for (const [name, type] of m.types) {
    if (type === 'counter') t.ok(name.endsWith('_total'), `counter ${name} ends in _total`);
    t.ok(m.help.get(name), `${name} has help`);
  }
  t.equal(value('ferry_nodes', { state: 'confirmed' }), 2);
  t.equal(value('ferry_nodes', { state: 'rolledBack' }), 1);
  t.equal(value('ferry_nodes', { state: 'downloading' }), 0, 'every state is listed, zero or not');
  t.equal(value('ferry_nodes_online'), 3);
  t.equal(value('ferry_releases'), 1);
  t.equal(value('ferry_release_verdicts_total', { state: 'accepted' }), 1);
  t.ok(value('ferry_relayed_bytes_total')! >= 3 * 40 * 1024, 'at least the image to each of 3 nodes was relayed');
  t.ok(value('ferry_chunks_sent_total')! >= 3 * 20, 'chunks counted');
  t.ok(value('ferry_acks_total')! > 0, 'acks counted');
  t.type(value('ferry_retransmits_total'), 'number');
  t.equal(value('ferry_update_outcomes_total', { outcome: 'confirmed' }), 2);
  t.equal(value('ferry_update_outcomes_total', { outcome: 'rolledBack' }), 1);
  t.equal(value('ferry_broker_clients', { role: 'node' }), 3);
  t.equal(value('ferry_broker_clients', { role: 'agent' }), 1);
  t.equal(value('ferry_broker_auth_failures_total', { reason: 'badCredentials' }), 1);
  t.equal(value('ferry_broker_connections_refused_total', { reason: 'frame' }), 1, 'the oversized packet counted');
  t.equal(value('ferry_broker_connections_refused_total', { reason: 'rate' }), 0);
  t.ok(value('ferry_uptime_seconds')! >= 0);

  const status = JSON.parse((await raw(g.http.url, 'GET', '/api/status')).body);
  t.same(status.nodes.map((n: NodeStatus) => n.state), ['confirmed', 'confirmed', 'rolledBack']);
  t.same(status.failures.map((f: { device: string; reason: string }) => [f.device, f.reason]), [['node-3', 'selfTestFailed']]);
  t.equal(status.summary.authFailures, 1);
});

t.test('rollout metrics and hostile label values come out escaped and parse back', async (t) => {
  const g = await startHttpGateway({ nodes: 0 });
  t.teardown(() => g.close());
  // Stand-in for the rollout engine (agent.rollouts(), fixed interface 2), with a hostile id.
  Object.assign(g.agent, { rollouts: () => [hostileRollout()] });
  const m = parseExposition((await raw(g.http.url, 'GET', '/metrics')).body);
  const info = m.samples.find((s) => s.name === 'ferry_rollout_info');
  t.same(info?.labels, { rollout: HOSTILE, hw: 'esp32-devkitc', version: '1.1.0', state: 'halted' });
  const wave = (w: string, state: string) => m.samples.find((s) => s.name === 'ferry_rollout_wave_nodes' && s.labels.wave === w && s.labels.state === state)?.value;
  t.equal(wave('1', 'failed'), 1);
  t.equal(wave('1', 'in_progress'), 1);
  t.equal(wave('0', 'confirmed'), 1);
  t.equal(m.samples.find((s) => s.name === 'ferry_rollout_current_wave')?.value, 1);
});

t.test('read-only: methods, paths, caps, headers; one-line errors', async (t) => {
  const g = await startHttpGateway({ nodes: 0 });
  t.teardown(() => g.close());
  const u = g.http.url;
  const page = await raw(u, 'GET', '/');
  t.equal(page.status, 200);
  t.match(page.headers['content-security-policy'], /default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'/);
  t.equal(page.headers['x-content-type-options'], 'nosniff');
  t.equal(page.headers['x-frame-options'], 'DENY');
  t.notMatch(page.body, /<script>|style=/, 'no inline script or style (the CSP forbids them)');
  t.equal((await raw(u, 'GET', '/app.js')).headers['content-type'], 'text/javascript; charset=utf-8');
  t.equal((await raw(u, 'GET', '/app.css?v=1')).status, 200, 'a query string is ignored');
  const head = await raw(u, 'HEAD', '/metrics');
  t.equal(head.status, 200);
  t.equal(head.body, '', 'HEAD has no body');
  t.ok(Number(head.headers['content-length']) > 0, 'but says how long it would be');

  const connect = await rawBytes(u, 'CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n');
  t.match(connect, /^HTTP\/1\.1 405 [\s\S]*Allow: GET, HEAD[\s\S]*\r\n\r\nmethod CONNECT not allowed: this server is read-only \(GET, HEAD\)\n$/, 'CONNECT refused');
  for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE']) {
    const r = await raw(u, method, '/metrics');
    t.equal(r.status, 405, `${method} refused`);
    t.equal(r.headers.allow, 'GET, HEAD');
    t.match(r.body, /^method \w+ not allowed: this server is read-only \(GET, HEAD\)\n$/, 'one line');
  }
  for (const path of ['/../../etc/passwd', '/%2e%2e/%2e%2e/etc/passwd', '/..%2f..%2fpackage.json', '/app.js/../../package.json', '//etc/passwd', '/agent/http/server.js', '/api', '/metrics/', '/.git/config', '/app.js%00.png']) {
    const r = await raw(u, 'GET', path);
    t.equal(r.status, 404, `${path}: 404`);
    t.equal(r.body, 'not found\n', `${path}: one line, nothing else`);
  }
  t.equal((await raw(u, 'GET', `/${'a'.repeat(3000)}`)).status, 414, 'long URL');
  t.equal((await raw(u, 'GET', '/', { 'Content-Length': '5' }, 'hello')).status, 413, 'a GET with a body');
  t.equal((await raw(u, 'GET', '/', { Host: 'evil.example:80' })).status, 421, 'a foreign Host header (DNS rebinding) is refused on loopback');
  t.equal((await raw(u, 'GET', '/', { Host: `localhost:${g.http.port}` })).status, 200, 'localhost is fine');
  const big = await rawBytes(u, `GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'b'.repeat(10_000)}\r\n\r\n`);
  t.match(big, /^HTTP\/1\.1 431 /, 'headers over the cap');
  const many = await rawBytes(u, `GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n${Array.from({ length: 100 }, (_, i) => `X-H${i}: 1\r\n`).join('')}Connection: close\r\n\r\n`);
  t.match(many, /^HTTP\/1\.1 200 /, 'extra headers beyond the count cap are dropped, not a crash');
  const garbage = await rawBytes(u, 'NOT HTTP AT ALL\r\n\r\n');
  t.match(garbage, /^HTTP\/1\.1 400 Bad Request\r\n[\s\S]*\r\n\r\nbad request\n$/, 'garbage gets a one-line 400');
  t.equal((await raw(u, 'GET', '/')).status, 200, 'still serving');
});

t.test('live updates: many clients get the same events, the limit is enforced, a slow client is dropped alone', async (t) => {
  const g = await startHttpGateway({ nodes: 2, live: { maxClients: 12, maxBacklogBytes: 64 * 1024, flushMs: 50 } });
  t.teardown(() => g.close());
  for (const id of ['node-1', 'node-2']) await untilStatus(g.agent, id, () => true, 'hello');
  const clients = await Promise.all(Array.from({ length: 11 }, () => sse(g.http.url)));
  t.teardown(() => clients.forEach((c) => c.close()));
  for (const c of clients) {
    t.equal(c.status, 200);
    const snap = JSON.parse((await c.next((e) => e.event === 'snapshot')).data);
    t.equal(snap.nodes.length, 2);
  }
  const head = await raw(g.http.url, 'HEAD', '/api/events');
  t.equal(head.status, 200, 'HEAD on the stream answers without holding a slot');
  t.equal(head.headers['content-type'], 'text/event-stream; charset=utf-8');

  // The 12th holds the last slot and never reads: it will fall behind.
  const slow = await new Promise<net.Socket>((resolve) => {
    const s = net.connect(g.http.port, '127.0.0.1', () => {
      s.write('GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
      s.once('data', () => {
        s.pause();
        resolve(s);
      });
    });
  });
  t.teardown(() => slow.destroy());
  const over = await raw(g.http.url, 'GET', '/api/events');
  t.equal(over.status, 503, 'one client over the limit is refused');
  t.match(over.body, /^12 live viewers already: try again later\n$/);

  await g.publish('1.1.0', 32 * 1024);
  await Promise.all(clients.map((c) => c.next((e) => e.event === 'nodes' && (JSON.parse(e.data) as NodeStatus[]).some((n) => n.id === 'node-1' && n.state === 'confirmed'))));
  t.pass('every client saw node-1 confirmed live');

  // Volume for the slow reader: status events of a large fleet, as the agent emits them.
  const big = { ...(g.agent.status('node-1') as NodeStatus), detail: 'x'.repeat(8 * 1024) };
  for (let round = 0; g.http.live.dropped === 0; round++) {
    t.ok(round < 400, 'the slow client is dropped before 400 rounds of ~1.6 MB');
    if (round >= 400) break;
    for (let i = 0; i < 200; i++) g.agent.emit('status', { ...big, id: `bulk-${i}` });
    const marker = `marker-${round}`;
    g.agent.emit('status', { ...big, id: marker, detail: '' });
    await Promise.all(clients.map((c) => c.next((e) => e.event === 'nodes' && e.data.includes(`"${marker}"`))));
    for (const c of clients) c.events.length = 0; // keep the test's own memory flat
  }
  t.equal(g.http.live.dropped, 1, 'exactly the slow client was dropped');
  t.equal(g.http.live.clientCount, 11, 'the readers all stay connected');
  g.agent.emit('status', { ...big, id: 'after-drop', detail: '' });
  await Promise.all(clients.map((c) => c.next((e) => e.event === 'nodes' && e.data.includes('"after-drop"'))));
  t.pass('the readers keep receiving after the drop');
  const again = await sse(g.http.url);
  t.equal(again.status, 200, 'the freed slot takes a new client');
  again.close();
  const metrics = parseExposition((await raw(g.http.url, 'GET', '/metrics')).body);
  t.equal(metrics.samples.find((s) => s.name === 'ferry_http_sse_dropped_total')?.value, 1);
});
