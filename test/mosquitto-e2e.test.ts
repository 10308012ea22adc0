import { untilStatus as until } from './helpers/world.js';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { Agent } from '../agent/agent.js';
import { IdentityStore, type Credentials } from '../broker/index.js';
import { mosquittoAcl } from '../broker/mosquitto.js';
import { demoImage } from '../harness/images.js';
import { startFleet } from '../device/fleet.js';
import { publishRelease } from '../operator/publish.js';
import { generateOperatorKey, sha256 } from '../shared/manifest.js';
import { connect, end, findBinary, mosquittoPasswd, nextMessage, startMosquittoWith, subscribe, tmpDir } from './helpers/broker-support.js';

/**
 * Interop: a whole update through Debian's Mosquitto instead of aedes. The broker runs the
 * configuration the repo ships (broker/mosquitto/mosquitto.conf, with this test's port and file
 * paths substituted), the ACL mosquittoAcl() generates from the identity store, and a password file
 * made with mosquitto_passwd from the secrets `store.add` printed. Anonymous access is off.
 */
const here = path.dirname(fileURLToPath(import.meta.url));
const shipped = path.resolve(here, '../../broker/mosquitto');
const HW = 'esp32-mosq';

t.test('the shipped example ACL is what mosquittoAcl() generates for its identities', async (t) => {
  const dir = tmpDir('mosq-acl');
  const store = IdentityStore.open(dir);
  t.teardown(() => {
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  // The identities the example file is written for (its comments and docs/broker.md name them).
  await store.add('node', 'node-1', { groups: ['hall'], password: 'example-node-1-secret' });
  await store.add('node', 'node-2', { password: 'example-node-2-secret' });
  await store.add('agent', 'gateway-1', { serves: ['*'], password: 'example-gateway-secret' });
  await store.add('agent', 'hall-agent', { serves: ['group:hall'], password: 'example-hall-secret!' });
  await store.add('operator', 'release-bot', { password: 'example-release-secret' });
  const generated = mosquittoAcl(store.list(), 'ferry', ['home/#']);
  // The store lists by role then name; the file groups by identity in that same order.
  t.equal(fs.readFileSync(path.join(shipped, 'ferry.acl'), 'utf8').trim(), generated.trim(), 'broker/mosquitto/ferry.acl is in sync with broker/mosquitto.ts');
});

const bin = findBinary('mosquitto');
const passwdBin = findBinary('mosquitto_passwd');
if (!bin || !passwdBin) {
  t.test('update through Mosquitto', { skip: 'mosquitto not found: install Debian package mosquitto (listed in .ci/packages.txt)' }, () => {});
} else {
  t.test('update through Mosquitto: two nodes, one confirms, one rolls back', async (t) => {
    const dir = tmpDir('mosq-e2e');
    const store = IdentityStore.open(path.join(dir, 'identities.sqlite'));
    const creds: Credentials[] = [];
    const add = async (...a: Parameters<IdentityStore['add']>) => {
      const c = await store.add(...a);
      creds.push(c);
      return c;
    };
    const n1 = await add('node', 'm-node-1');
    const n2 = await add('node', 'm-node-2');
    const agentCred = await add('agent', 'gateway-1', { serves: ['m-node-*'] });
    const opCred = await add('operator', 'release-bot');

    const acl = path.join(dir, 'ferry.acl');
    const passwd = path.join(dir, 'ferry.passwd');
    fs.writeFileSync(acl, mosquittoAcl(store.list(), 'ferry'));
    mosquittoPasswd(passwdBin, passwd, creds);
    // Started as root, mosquitto drops to user "mosquitto": it must read its files and write its
    // persistence directory.
    const persist = path.join(dir, 'persist');
    fs.mkdirSync(persist);
    fs.chmodSync(dir, 0o755);
    fs.chmodSync(persist, 0o777);
    for (const f of [acl, passwd]) fs.chmodSync(f, 0o644);
    const conf = fs.readFileSync(path.join(shipped, 'mosquitto.conf'), 'utf8');
    const mosq = await startMosquittoWith(bin, dir, (port) => {
      const out = conf
        .replace(/^listener 1883$/m, `listener ${port} 127.0.0.1`)
        .replace(/^password_file .*$/m, `password_file ${passwd}`)
        .replace(/^acl_file .*$/m, `acl_file ${acl}`);
      // The substitutions must all have happened, or the test would run some other configuration.
      for (const line of [`listener ${port} 127.0.0.1`, `password_file ${passwd}`, `acl_file ${acl}`, 'allow_anonymous false']) {
        if (!out.split('\n').includes(line)) throw new Error(`shipped mosquitto.conf no longer has the line this test rewrites into "${line}"`);
      }
      return `${out}\npersistence_location ${persist}/\nlog_dest stderr\nlog_type error\nlog_type warning\n`;
    });

    const key = generateOperatorKey();
    const agent = new Agent({ brokerUrl: mosq.url, ...agentCred, clientId: 'gateway-1', dataDir: path.join(dir, 'agent'), trust: [key.publicKey], rtt: { initialRto: 300, minRto: 100 } });
    let fleet: Awaited<ReturnType<typeof startFleet>> | undefined;
    t.teardown(async () => {
      await fleet?.stop();
      await agent.stop().catch(() => {});
      await mosq.stop();
      store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    await t.rejects(connect(mosq.url, { clientId: 'anon' }), /Not authorized/, 'anonymous refused, as the shipped configuration says');
    await t.rejects(connect(mosq.url, { username: 'm-node-1', password: 'not-the-secret-at-all', clientId: 'm-node-1' }), /Not authorized|Bad username or password/, 'a wrong secret is refused');

    await agent.start();
    fleet = await startFleet({
      brokerUrl: mosq.url, count: 2, idPrefix: 'm-node', hw: HW, version: '1.0.0', trust: [key.publicKey], failSelfTest: 1, maxMessage: 2048,
      perNode: { 'm-node-1': { username: n1.username, password: n1.password }, 'm-node-2': { username: n2.username, password: n2.password } },
    });
    const outcome = (id: string) => until(agent, id, (s) => s.state === 'confirmed' || s.state === 'rolledBack' || s.state === 'rejected' || s.state === 'timedOut');
    await until(agent, 'm-node-1', () => true);
    await until(agent, 'm-node-2', () => true);

    const image = demoImage(HW, '1.1.0', 150 * 1024);
    // The agent's verdict comes back through Mosquitto's ACL (docs/protocol.md 2.1).
    const published = await publishRelease({ brokerUrl: mosq.url, ...opCred, image, hw: HW, version: '1.1.0', key: key.privateKey, waitForAgents: true, refuseConflict: true });
    t.same(published.verdicts.map((v) => [v.agent, v.state]), [['gateway-1', 'accepted']], 'gateway-1 accepted the release');
    // An identity Mosquitto's ACL does not let publish releases: acknowledged, dropped, never read back.
    const denied = await publishRelease({ brokerUrl: mosq.url, ...agentCred, image, hw: HW, version: '1.2.0', key: key.privateKey }).then(() => undefined, (e: Error) => e);
    t.match(denied?.message, /^not authorized to publish/, 'a dropped publish is detected');
    const [s1, s2] = await Promise.all([outcome('m-node-1'), outcome('m-node-2')]);
    t.equal(s1.state, 'confirmed', `m-node-1 ${s1.state}${s1.reason ? ` (${s1.reason})` : ''}`);
    t.equal(fleet.byId('m-node-1')!.runningVersion, '1.1.0', 'm-node-1 runs 1.1.0');
    t.ok(fleet.byId('m-node-1')!.runningDigest.equals(sha256(image)), 'exactly the published image');
    t.equal(s2.state, 'rolledBack', 'm-node-2 rolled back');
    t.equal(s2.reason, 'selfTestFailed', 'because its self-test failed');
    t.equal(fleet.byId('m-node-2')!.runningVersion, '1.0.0', 'and runs 1.0.0 again');

    // Retained status through Mosquitto, readable by the operator (and only by it and the agent).
    const op = await connect(mosq.url, { ...opCred, clientId: 'release-bot' });
    const st = nextMessage(op, (tp) => tp === 'ferry/d/m-node-1/status');
    await subscribe(op, 'ferry/d/m-node-1/status');
    const got = await st;
    t.ok(got.retain, 'status is retained');
    t.equal(JSON.parse(got.payload.toString()).state, 'confirmed', 'and says confirmed');
    await end(op);
    t.notMatch(mosq.log(), /Error|error:/, 'mosquitto logged no error');
  });
}

