import fs from 'node:fs';
import t, { type Test } from 'tap';
import { IdentityStore } from '../broker/identity-store.js';
import { poolKdf, type Kdf } from '../broker/kdf.js';
import { VerifiedCache } from '../broker/verified-cache.js';
import { tmpDir } from './helpers/broker-support.js';

/**
 * Issue 14: a fleet that reboots into a new image logs in again all at once; a secret the KDF
 * accepted lately is not put through scrypt again. What must not change: a wrong, re-keyed or
 * revoked secret is refused as before, and a wrong one always pays the KDF.
 */
function countingStore(t: Test, file?: string): { store: IdentityStore; runs: () => number; dir: string } {
  const dir = file ?? tmpDir('verified-cache');
  let runs = 0;
  const kdf: Kdf = (...args) => {
    runs++;
    return poolKdf(...args);
  };
  const store = IdentityStore.open(dir, { kdf });
  t.teardown(() => store.close());
  if (!file) t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return { store, runs: () => runs, dir };
}

t.test('a secret verified once is accepted again without the KDF; a wrong one still pays it', async (t) => {
  const { store, runs } = countingStore(t);
  const cred = await store.add('node', 'node-1');
  const afterAdd = runs();
  t.match(await store.verify('node-1', cred.password), { ok: true });
  t.equal(runs(), afterAdd + 1, 'first login: one KDF run');
  t.match(await store.verify('node-1', cred.password), { ok: true, identity: { username: 'node-1', role: 'node' } });
  t.match(await store.verify('node-1', Buffer.from(cred.password)), { ok: true });
  t.equal(runs(), afterAdd + 1, 'logins again: no KDF run');
  t.match(await store.verify('node-1', `${cred.password}x`), { ok: false, reason: /wrong secret/ });
  t.equal(runs(), afterAdd + 2, 'a wrong secret runs the KDF');
  t.match(await store.verify('node-1', cred.password), { ok: true }, 'the right one is still accepted');
});

t.test('re-keying the identity (here or in another process) retires the cached secret', async (t) => {
  const { store, dir } = countingStore(t);
  const old = await store.add('node', 'node-2');
  t.match(await store.verify('node-2', old.password), { ok: true });
  const fresh = await store.add('node', 'node-2', { replace: true });
  t.match(await store.verify('node-2', old.password), { ok: false, reason: /wrong secret/ });
  t.match(await store.verify('node-2', fresh.password), { ok: true });
  // Another process (the CLI) re-keys the same file.
  const { store: cli } = countingStore(t, dir);
  const third = await cli.add('node', 'node-2', { replace: true });
  t.match(await store.verify('node-2', fresh.password), { ok: false, reason: /wrong secret/ });
  t.match(await store.verify('node-2', third.password), { ok: true });
});

t.test('a revoked identity is refused even with a cached secret', async (t) => {
  const { store } = countingStore(t);
  const cred = await store.add('agent', 'agent-1');
  t.match(await store.verify('agent-1', cred.password), { ok: true });
  t.ok(store.revoke('agent-1'));
  t.match(await store.verify('agent-1', cred.password), { ok: false, reason: /revoked/ });
});

t.test('the cache is bounded: the least recently used secret is forgotten first', async (t) => {
  const cache = new VerifiedCache(2);
  const hash = Buffer.alloc(32, 1);
  const secret = (n: number) => Buffer.from(`secret-${n}`);
  cache.add('a', hash, secret(1));
  cache.add('b', hash, secret(2));
  t.ok(cache.has('a', hash, secret(1)), 'a used: b is now the oldest');
  cache.add('c', hash, secret(3));
  t.equal(cache.size, 2);
  t.notOk(cache.has('b', hash, secret(2)), 'b forgotten');
  t.ok(cache.has('a', hash, secret(1)));
  t.ok(cache.has('c', hash, secret(3)));
  t.notOk(cache.has('a', hash, secret(3)), "another name's secret does not match");
  t.notOk(cache.has('a', Buffer.alloc(32, 2), secret(1)), 'nor the same secret against another stored hash');
});
