import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { IdentityStore } from '../broker/index.js';
import { mosquittoAcl } from '../broker/mosquitto.js';
import { ACTORS, IDENTITIES, connectActors, end, findBinary, mosquittoPasswd, runMatrix, startMosquitto, tmpDir, type Actor } from './helpers/broker-support.js';

/** Debian's mosquitto with the generated ferry ACL refuses and allows the same matrix as the plugin. */
const bin = findBinary('mosquitto');
const passwdBin = findBinary('mosquitto_passwd');
if (!bin || !passwdBin) {
  t.test('mosquitto ACL matrix', { skip: 'mosquitto not found: install Debian package mosquitto (listed in .ci/packages.txt)' }, () => {});
} else {
  t.test('mosquitto ACL matrix', async (t) => {
    const dir = tmpDir('mosquitto');
    const store = IdentityStore.open(dir);
    const creds: Partial<Record<Actor, { username: string; password: string }>> = {};
    for (const [actor, id] of Object.entries(IDENTITIES)) {
      creds[actor as Actor] = await store.add(id.role, id.username, {
        groups: 'groups' in id ? [...id.groups] : undefined,
        serves: 'serves' in id ? [...id.serves] : undefined,
      });
    }
    const acl = path.join(dir, 'ferry.acl');
    const passwd = path.join(dir, 'passwd');
    fs.writeFileSync(acl, mosquittoAcl(store.list(), 'ferry', ['plain/#', 'ctl/#']));
    mosquittoPasswd(passwdBin, passwd, Object.values(creds));
    // Started as root, mosquitto drops to user "mosquitto": it must be able to read its files.
    fs.chmodSync(dir, 0o755);
    for (const f of [acl, passwd]) fs.chmodSync(f, 0o644);
    const mosq = await startMosquitto(bin, { acl, passwd }, dir);
    t.teardown(async () => {
      await mosq.stop();
      store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });
    const clients = await connectActors(mosq.url, creds);
    try {
      await runMatrix(t, clients, 'ferry', 'mosquitto', { subackRefusals: false });
    } finally {
      await end(...ACTORS.map((a) => clients[a]));
    }
  });
}
