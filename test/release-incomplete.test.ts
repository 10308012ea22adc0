import t from 'tap';
import mqtt from 'mqtt';
import { demoImage } from '../harness/images.js';
import { sha256, signManifest } from '../shared/manifest.js';
import { topics } from '../shared/topics.js';
import { makeWorld } from './helpers/world.js';

/**
 * Issue 10 item 7: a release whose manifest arrives but not all its parts is given up after the
 * intake timeout: logged with what is missing, its memory freed, its part subscription dropped.
 * A later complete publish of the release still works.
 */
const HW = 'esp32-partial';

t.test('an incomplete release times out, is logged with its missing parts and freed; a later complete publish works', async (t) => {
  const logs: string[] = [];
  const world = await makeWorld({ agent: { releaseAssemblyTimeoutMs: 300, log: (_level, msg) => logs.push(msg) } });
  t.teardown(() => world.close());
  const PART = 16 * 1024;
  const image = demoImage(HW, '1.1.0', 3 * PART);
  const manifest = signManifest({ hw: HW, version: '1.1.0', securityVersion: 0, size: image.length, digest: sha256(image), created: Date.now(), flags: 0 }, world.key.privateKey);
  const tp = topics();
  const op = await mqtt.connectAsync(world.broker.url, { protocolVersion: 4 });
  t.teardown(() => op.endAsync());
  // Parts 0 and 2 and the manifest; part 1 never comes (a publisher that died half way).
  await op.publishAsync(tp.releasePart(HW, '1.1.0', 0), image.subarray(0, PART), { qos: 1, retain: true });
  await op.publishAsync(tp.releasePart(HW, '1.1.0', 2), image.subarray(2 * PART), { qos: 1, retain: true });
  // The agent's verdict says so too (docs/protocol.md 2.1).
  const verdict = new Promise<Buffer>((resolve) => op.on('message', (topic, payload) => topic.includes('/status/') && resolve(payload)));
  await op.subscribeAsync(tp.releaseStatusWildcard(HW, '1.1.0'), { qos: 1 });
  const gaveUp = new Promise<string>((resolve) => {
    world.agent.store.on('event', (e) => e.kind === 'release-incomplete' && resolve(e.detail));
  });
  await op.publishAsync(tp.releaseManifest(HW, '1.1.0'), manifest, { qos: 1, retain: true });
  const detail = await gaveUp;
  t.match(detail, /esp32-partial 1\.1\.0/, 'the event names the release');
  t.match(detail, /2 part\(s\), 32768 of 49152 bytes; missing 1 part\(s\): 1;/, `it says what is missing: ${detail}`);
  t.ok(logs.some((l) => /release esp32-partial 1\.1\.0 incomplete after 300 ms/.test(l)), 'logged as a warning');
  t.equal(world.agent.assemblingReleases, 0, 'its memory is freed');
  t.equal(world.agent.partSubscriptions, 0, 'its part subscription is dropped');
  t.match(JSON.parse((await verdict).toString()), { state: 'refused', reason: 'incomplete', digest: sha256(image).toString('hex'), hw: HW, version: '1.1.0' }, 'the retained verdict: refused, incomplete');

  // The operator publishes the release again, completely: it is taken.
  const ready = new Promise<void>((resolve) => world.agent.once('release', () => resolve()));
  await world.publish({ hw: HW, version: '1.1.0', image, partSize: PART });
  await ready;
  t.ok(world.agent.catalog.all().some((r) => r.row.hw === HW && r.row.version === '1.1.0'), 'the complete release is held');
  t.equal(world.agent.assemblingReleases, 0);
  t.equal(world.agent.partSubscriptions, 0);
});
