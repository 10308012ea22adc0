import fs from 'node:fs';
import Database from 'better-sqlite3';
import path from 'node:path';
import t from 'tap';
import { IdentityStore } from '../broker/index.js';
import { demoImage } from '../harness/images.js';
import { publishRelease } from '../operator/publish.js';
import { generateOperatorKey } from '../shared/manifest.js';
import { connect, end, publish, subscribe, tmpDir } from './helpers/broker-support.js';
import { startFerryServer } from './helpers/ferry-server.js';

/**
 * Issue 10 item 11: without Redis, `ferry broker` and `ferry gateway` keep retained messages in
 * `<data-dir>/retained.sqlite`, so a restart on the same data dir loses no release and no status.
 */

/** Retained messages under `filter`, as a fresh client sees them: resolves once `want` topics have arrived. */
async function retained(url: string, cred: { username: string; password: string }, filter: string, want: string[]): Promise<Map<string, Buffer>> {
  const c = await connect(url, { ...cred, clientId: `${cred.username}/check` });
  const got = new Map<string, Buffer>();
  const all = new Promise<void>((resolve) => {
    c.on('message', (tp, p, packet) => {
      if (packet.retain) got.set(tp, p);
      if (want.every((w) => got.has(w))) resolve();
    });
  });
  await subscribe(c, filter);
  await all;
  await end(c);
  return got;
}

t.test('ferry broker: a retained release and status survive a restart on the same data dir', async (t) => {
  const dir = tmpDir('retained-broker');
  const store = IdentityStore.open(dir);
  const op = await store.add('operator', 'op-1');
  const agent = await store.add('agent', 'agent-1');
  store.close();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const key = generateOperatorKey();
  const image = demoImage('hw-keep', '3.0.0', 150 * 1024);

  const first = await startFerryServer('broker', ['--data-dir', dir]);
  const release = await publishRelease({ brokerUrl: first.url, image, hw: 'hw-keep', version: '3.0.0', key: key.privateKey, ...op });
  const a = await connect(first.url, { ...agent, clientId: 'agent-1' });
  await publish(a, 'ferry/d/node-9/status', JSON.stringify({ id: 'node-9', state: 'confirmed' }), { retain: true });
  await publish(a, 'ferry/d/node-9/status', JSON.stringify({ id: 'node-9', state: 'confirmed', v: 2 }), { retain: true });
  await end(a);
  t.equal(await first.stop(), 0, 'the first broker stopped cleanly');
  t.ok(fs.existsSync(path.join(dir, 'retained.sqlite')), 'retained messages are kept in <data-dir>/retained.sqlite');

  const second = await startFerryServer('broker', ['--data-dir', dir]);
  t.teardown(() => second.stop());
  const parts = Array.from({ length: release.parts }, (_, i) => `ferry/r/hw-keep/3.0.0/part/${i}`);
  const got = await retained(second.url, op, 'ferry/#', ['ferry/r/hw-keep/3.0.0/manifest', ...parts, 'ferry/d/node-9/status']);
  t.ok(got.get('ferry/r/hw-keep/3.0.0/manifest')!.equals(release.manifestBytes), 'the signed manifest is served after the restart');
  t.same(Buffer.concat(parts.map((p) => got.get(p)!)), image, `all ${release.parts} image parts are served, byte for byte`);
  t.same(JSON.parse(got.get('ferry/d/node-9/status')!.toString()), { id: 'node-9', state: 'confirmed', v: 2 }, 'the latest status is served');
});

t.test('ferry gateway: a retained release survives a restart; a cleared retained message stays cleared', async (t) => {
  const dir = tmpDir('retained-gateway');
  const store = IdentityStore.open(dir);
  const op = await store.add('operator', 'op-1');
  store.close();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const key = generateOperatorKey();
  const trust = path.join(dir, 'operator.pub');
  fs.writeFileSync(trust, key.publicKey.export({ format: 'pem', type: 'spki' }));
  const image = demoImage('hw-gw', '1.2.0', 40 * 1024);
  const args = ['--data-dir', dir, '--trust', trust];

  const first = await startFerryServer('gateway', args);
  const release = await publishRelease({ brokerUrl: first.url, image, hw: 'hw-gw', version: '1.2.0', key: key.privateKey, ...op });
  const c = await connect(first.url, { ...op, clientId: 'op-1/w' });
  await publish(c, 'site/note', 'temporary', { retain: true });
  await publish(c, 'site/note', '', { retain: true });
  await publish(c, 'site/kept', 'yes', { retain: true });
  await end(c);
  t.equal(await first.stop(), 0, 'the first gateway stopped cleanly');
  const db = new Database(path.join(dir, 'retained.sqlite'), { readonly: true });
  const topics = (db.prepare('SELECT topic FROM retained ORDER BY topic').all() as { topic: string }[]).map((r) => r.topic);
  db.close();
  t.ok(topics.includes('site/kept') && !topics.includes('site/note'), 'on disk: the kept message, not the cleared one');

  const second = await startFerryServer('gateway', args);
  t.teardown(() => second.stop());
  const got = await retained(second.url, op, '#', ['ferry/r/hw-gw/1.2.0/manifest', 'site/kept']);
  t.ok(got.get('ferry/r/hw-gw/1.2.0/manifest')!.equals(release.manifestBytes), 'the manifest is served after the restart');
  t.equal(got.get('site/kept')!.toString(), 'yes', 'a plain retained message is served too');
});
