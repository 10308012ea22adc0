import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import mqtt, { type IClientOptions } from 'mqtt';
import { IdentityStore, startBroker, type RunningBroker } from '../broker/index.js';
import { closed, connect, end, findBinary, nextMessage, publish, subscribe, tmpDir, upPayload } from './helpers/broker-support.js';

/**
 * The broker's optional TLS listener with client certificates. A throwaway CA, a server certificate
 * for 127.0.0.1 and client certificates are made with Debian's openssl when the test runs. A client
 * whose certificate the CA signed is the identity named by the certificate's CN: no password, and the
 * ACL of that identity applies. Clients without a certificate, or with one from another CA, are
 * refused: at the TLS handshake when the listener requires certificates, at CONNACK otherwise.
 */
const openssl = findBinary('openssl');

interface Pki {
  ca: Buffer;
  server: { key: Buffer; cert: Buffer };
  client(cn: string): { key: Buffer; cert: Buffer };
  /** A client certificate from a CA the broker does not trust. */
  rogue: { key: Buffer; cert: Buffer };
}

function run(bin: string, args: string[], cwd: string): void {
  const r = spawnSync(bin, args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
}

/** EC P-256 keys: fast to make, and what small TLS stacks on nodes support. Valid for one day. */
function makePki(bin: string, dir: string): Pki {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const ca = (name: string) => run(bin, ['req', '-x509', ...ec, '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '1', '-subj', `/CN=${name}`], dir);
  const leaf = (name: string, cn: string, signer: string, ext: string) => {
    fs.writeFileSync(path.join(dir, `${name}.ext`), ext);
    run(bin, ['req', '-new', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`], dir);
    run(bin, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${signer}.crt`, '-CAkey', `${signer}.key`, '-CAcreateserial', '-out', `${name}.crt`, '-days', '1', '-extfile', `${name}.ext`], dir);
  };
  const read = (name: string) => ({ key: fs.readFileSync(path.join(dir, `${name}.key`)), cert: fs.readFileSync(path.join(dir, `${name}.crt`)) });
  ca('test-ca');
  ca('rogue-ca');
  leaf('server', 'localhost', 'test-ca', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  leaf('rogue', 'node-1', 'rogue-ca', 'extendedKeyUsage=clientAuth\n');
  const made = new Map<string, { key: Buffer; cert: Buffer }>();
  return {
    ca: fs.readFileSync(path.join(dir, 'test-ca.crt')),
    server: read('server'),
    rogue: read('rogue'),
    client(cn) {
      let c = made.get(cn);
      if (!c) {
        const name = `client-${cn.replace(/[^A-Za-z0-9-]/g, '_')}`;
        leaf(name, cn, 'test-ca', 'extendedKeyUsage=clientAuth\n');
        c = read(name);
        made.set(cn, c);
      }
      return c;
    },
  };
}

/**
 * How a connection attempt ends: 'connected', or the client's error message, or 'closed'. A TLS 1.3
 * server that rejects the client's certificate does so after the client's side of the handshake
 * has finished, and MQTT.js then reports only a close, no error.
 */
function outcome(url: string, opts: IClientOptions): Promise<string> {
  return new Promise((resolve) => {
    const c = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 20_000, ...opts });
    let settled = false;
    const done = (what: string) => {
      if (settled) return;
      settled = true;
      c.end(true);
      resolve(what);
    };
    c.once('connect', () => done('connected'));
    c.once('error', (err) => done(err.message));
    c.once('close', () => done('closed'));
  });
}

if (!openssl) {
  t.test('TLS listener with client certificates', { skip: 'openssl not found: install Debian package openssl' }, () => {});
} else {
  const dir = tmpDir('tls');
  const pki = makePki(openssl, dir);
  const store = IdentityStore.open(path.join(dir, 'identities.sqlite'));
  const logs: string[] = [];
  const log = (level: string, msg: string) => logs.push(`${level} ${msg}`);
  let optional: RunningBroker;
  let required: RunningBroker;

  /** mqtts options: trust the test CA (the server certificate is for 127.0.0.1), maybe present a client certificate. */
  const tlsOpts = (cert?: { key: Buffer; cert: Buffer }, extra: IClientOptions = {}): IClientOptions => ({ ca: pki.ca, rejectUnauthorized: true, ...(cert ?? {}), ...extra });

  t.before(async () => {
    await store.add('node', 'node-1');
    await store.add('node', 'node-2');
    await store.add('agent', 'agent-1', { serves: ['node-1'] });
    await store.add('node', 'node-gone');
    store.revoke('node-gone');
    const tls = { key: pki.server.key, cert: pki.server.cert, ca: pki.ca };
    optional = await startBroker({ ferry: { store, log }, tls });
    required = await startBroker({ ferry: { store, log }, tls: { ...tls, requireClientCert: true } });
  });
  t.teardown(async () => {
    await optional?.close();
    await required?.close();
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  t.test('a certificate is the identity: its CN names it and its ACL applies', async (t) => {
    t.match(optional.tlsUrl, /^mqtts:\/\/127\.0\.0\.1:\d+$/);
    const node = await connect(optional.tlsUrl!, tlsOpts(pki.client('node-1'), { clientId: 'node-1' }));
    const agent = await connect(optional.tlsUrl!, tlsOpts(pki.client('agent-1'), { clientId: 'agent-1' }));
    t.same(optional.plugin!.principalOf('node-1'), { role: 'node', id: 'node-1', groups: [], serves: [] }, 'node-1 by its certificate, without a password');
    t.equal(optional.plugin!.principalOf('agent-1')?.role, 'agent', 'agent-1 by its certificate');

    t.same(await subscribe(node, 'ferry/d/node-1/dn'), [1], 'node-1 may read its own dn');
    t.same(await subscribe(node, 'ferry/d/node-2/dn'), [128], "node-1 may not read node-2's dn");
    t.same(await subscribe(agent, 'ferry/d/node-1/up'), [1], 'agent-1 may read the up of a node it serves');
    t.same(await subscribe(agent, 'ferry/d/node-2/up'), [128], 'but not of a node it does not serve');
    const up = upPayload(99);
    const got = nextMessage(agent, (tp, p) => tp === 'ferry/d/node-1/up' && p.equals(up));
    await publish(node, 'ferry/d/node-1/up', up);
    await got;
    t.pass("node-1's up reaches agent-1 over TLS");
    const dn = Buffer.from([0xa1, 0x00, 0x13]);
    const gotDn = nextMessage(node, (tp, p) => tp === 'ferry/d/node-1/dn' && p.equals(dn));
    await publish(agent, 'ferry/d/node-1/dn', dn);
    await gotDn;
    t.pass("agent-1's dn reaches node-1");
    await end(node, agent);
  });

  t.test('a password still works on the TLS listener when certificates are optional', async (t) => {
    const cred = await store.add('operator', 'op-tls');
    const op = await connect(optional.tlsUrl!, tlsOpts(undefined, { ...cred, clientId: 'op-tls' }));
    t.equal(optional.plugin!.principalOf('op-tls')?.role, 'operator');
    await end(op);
  });

  t.test('refusals', async (t) => {
    await t.rejects(connect(optional.tlsUrl!, tlsOpts(undefined, { clientId: 'anon-tls' })), /Not authorized/, 'no certificate and no username: refused at CONNACK');
    await t.rejects(connect(optional.tlsUrl!, tlsOpts(pki.rogue, { clientId: 'node-1' })), /Not authorized/, 'a certificate from another CA proves nothing: refused at CONNACK');
    await t.rejects(connect(optional.tlsUrl!, tlsOpts(pki.client('ghost'), { clientId: 'ghost' })), /Not authorized/, 'a CN that is no identity is refused');
    await t.rejects(connect(optional.tlsUrl!, tlsOpts(pki.client('node-gone'), { clientId: 'node-gone' })), /Not authorized/, 'a revoked identity is refused even with a valid certificate');
    await t.rejects(connect(optional.tlsUrl!, tlsOpts(pki.client('node-2'), { clientId: 'node-1' })), /Identifier rejected/, "node-2's certificate cannot connect as node-1");
    await t.rejects(connect(optional.tlsUrl!, tlsOpts(pki.client('node-2'), { clientId: 'node-2', username: 'node-1', password: 'x'.repeat(20) })), /Bad username or password/, 'a username that contradicts the certificate is refused');
    t.ok(logs.some((l) => /certificate CN "ghost" is not a live identity/.test(l)), 'unknown CN logged');
    t.ok(logs.some((l) => /username "node-1" does not match certificate CN "node-2"/.test(l)), 'CN mismatch logged');

    // Requiring certificates: the handshake itself fails, MQTT never starts.
    const before = logs.filter((l) => /TLS handshake refused/.test(l)).length;
    t.not(await outcome(required.tlsUrl!, tlsOpts(undefined, { clientId: 'anon-tls-2' })), 'connected', 'no certificate: refused at the handshake');
    t.not(await outcome(required.tlsUrl!, tlsOpts(pki.rogue, { clientId: 'node-1' })), 'connected', 'untrusted certificate: refused at the handshake');
    t.equal(logs.filter((l) => /TLS handshake refused/.test(l)).length - before, 2, 'both handshake refusals logged');
    const ok = await connect(required.tlsUrl!, tlsOpts(pki.client('node-2'), { clientId: 'node-2' }));
    t.equal(required.plugin!.principalOf('node-2')?.role, 'node', 'a trusted certificate gets in');
    await end(ok);
  });

  t.test('revoking the identity behind a certificate disconnects it', async (t) => {
    const c = await connect(optional.tlsUrl!, tlsOpts(pki.client('node-2'), { clientId: 'node-2' }));
    const gone = closed(c);
    t.ok(store.revoke('node-2'));
    optional.plugin!.refresh();
    required.plugin!.refresh();
    await gone;
    await t.rejects(connect(optional.tlsUrl!, tlsOpts(pki.client('node-2'), { clientId: 'node-2' })), /Not authorized/, 'and it cannot come back');
  });

  t.test('the plain TCP listener is unaffected', async (t) => {
    const cred = await store.add('node', 'node-tcp');
    const c = await connect(optional.url, { ...cred, clientId: 'node-tcp' });
    t.equal(optional.plugin!.principalOf('node-tcp')?.role, 'node');
    await end(c);
  });
}
