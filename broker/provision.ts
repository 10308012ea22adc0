import type { Role } from './acl.js';
import type { AddOptions, Credentials, IdentityStore } from './identity-store.js';

/**
 * Provisioning for programs that run their own clients against a broker with auth on (`ferry demo`,
 * `ferry sim --provision`): they need each secret in clear, which the store hands out only when it
 * creates one. So an identity of the same name is re-keyed, and that is only done when it has the
 * role asked for: re-keying an agent or operator because a simulated node shares its name would lock
 * out a real client.
 */
export async function provision(store: IdentityStore, role: Role, names: readonly string[], opts: Omit<AddOptions, 'replace' | 'password'> = {}): Promise<Map<string, Credentials>> {
  const existing = new Map(store.list().map((i) => [i.username, i]));
  for (const name of names) {
    const other = existing.get(name);
    if (other && !other.revokedAt && other.role !== role) {
      const a = other.role === 'node' ? 'a' : 'an';
      throw new Error(`cannot provision ${role} "${name}": ${store.file} already has ${a} ${other.role} of that name`);
    }
  }
  // scrypt runs on libuv's thread pool: hashing the secrets side by side is several times faster.
  const creds = await Promise.all(names.map((name) => store.add(role, name, { ...opts, replace: true })));
  return new Map(creds.map((c) => [c.username, c]));
}
