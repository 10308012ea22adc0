import { randomUUID } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { AuthenticateError, Client } from 'aedes';
import type { Principal } from './acl.js';
import { FailureBackoff, RecentLogins, Semaphore } from './auth-guard.js';
import type { Identity, IdentityStore } from './identity-store.js';
import { TokenBucket } from '../shared/token-bucket.js';
import type { Limits } from './limits.js';
import type { LogFn } from './plugin.js';
import { throttled } from './throttled-log.js';

/**
 * The authenticate hook and the client-id rules around it:
 *
 * - a verified TLS client certificate names the identity (no password);
 * - a username/password pair is verified through a small semaphore, an address with repeated
 *   failures is refused without running the KDF for a doubling back-off, and addresses without a
 *   recent login share a verification rate budget and queue behind those with one (broker/auth-guard.ts);
 * - a node's client id must be its device id; an agent's or operator's is its name or `name/<suffix>`
 *   ({@link namespacedClientId} rewrites any other at CONNECT), so client ids are namespaced by
 *   principal and nobody can take over another principal's session;
 * - anonymous clients may not use a provisioned name (or `name/...`) as client id;
 * - a client id that is live on this broker is only handed over to the same principal.
 */
export const RC = { identifierRejected: 2, serverUnavailable: 3, badCredentials: 4, notAuthorized: 5 } as const;

export type Done = (e: AuthenticateError | null, ok: boolean | null) => void;

export interface Authenticator {
  authenticate(client: Client, username: string | undefined, password: Buffer | undefined, done: Done): void;
  /** For preConnect: the client id to register for this CONNECT (see namespacing above). */
  namespacedClientId(client: Client, clientId: string, username: string | undefined): string;
}

export interface AuthDeps {
  store: IdentityStore | undefined;
  allowAnonymous: boolean;
  limits: () => Limits;
  log: LogFn;
  /** The live principal of a client id on this broker, if any (another connection). */
  holder(clientId: string, self: Client): Principal | null | undefined;
  /** Accepts the client as `principal` (creates its session) and answers CONNECT. */
  admit(client: Client, principal: Principal, done: Done): void;
  /** Told of every refused CONNECT, with its MQTT return code (for the broker's counters). */
  refused?(code: number): void;
}

const anonymous: Principal = { role: 'anonymous', id: '', groups: [], serves: [] };

export function principalFrom(identity: Identity): Principal {
  return { role: identity.role, id: identity.username, groups: identity.groups, serves: identity.serves };
}

export function makeAuthenticator(d: AuthDeps): Authenticator {
  const { store } = d;
  // Refusals come in floods when someone tries: the log says what happens without drowning.
  const log = throttled(d.log);
  const backoff = new FailureBackoff(() => d.limits().auth);
  const slots = new Semaphore(() => d.limits().auth);
  const recent = new RecentLogins(3_600_000, () => d.limits().auth.maxAddresses);
  const budget = new TokenBucket({ rate: d.limits().auth.newAddressRate, burst: d.limits().auth.newAddressBurst }, performance.now());

  const refuse = (done: Done, client: Client, code: number, why: string) => {
    log('warn', `connect refused for client ${JSON.stringify(client.id)} from ${addressOf(client)}: ${why}`, { client: client.id, address: addressOf(client), reason: why, auth: 'refused' });
    d.refused?.(code);
    const err = new Error(why) as AuthenticateError;
    (err as { returnCode: number }).returnCode = code;
    done(err, null);
  };

  /** The provisioned identity a client id belongs to: its name, or `name/...`. */
  const ownerOfClientId = (clientId: string): Identity | undefined => {
    if (!store) return undefined;
    const slash = clientId.indexOf('/');
    return store.get(slash < 0 ? clientId : clientId.slice(0, slash));
  };

  const accept = (client: Client, principal: Principal, done: Done) => {
    const id = client.id;
    if (principal.role === 'node' && id !== principal.id) {
      return refuse(done, client, RC.identifierRejected, `node "${principal.id}" must connect with client id "${principal.id}", not "${id}"`);
    }
    if ((principal.role === 'agent' || principal.role === 'operator') && id !== principal.id && !id.startsWith(`${principal.id}/`)) {
      return refuse(done, client, RC.identifierRejected, `${principal.role} "${principal.id}" must connect with client id "${principal.id}" or "${principal.id}/<suffix>", not "${id}"`);
    }
    if (principal.role === 'anonymous' && ownerOfClientId(id)) {
      return refuse(done, client, RC.identifierRejected, `client id "${id}" belongs to a provisioned identity`);
    }
    const holder = d.holder(id, client);
    if (holder !== undefined && (holder === null || holder.role === 'anonymous' || holder.role !== principal.role || holder.id !== principal.id)) {
      return refuse(done, client, RC.identifierRejected, `client id "${id}" is in use by another client`);
    }
    d.admit(client, principal, done);
  };

  const verifyPassword = async (client: Client, username: string, password: Buffer, done: Done) => {
    const addr = addressOf(client);
    const backedOff = () => {
      const wait = backoff.blockedFor(addr);
      if (wait > 0) refuse(done, client, RC.serverUnavailable, `too many failed logins from ${addr}: back-off for ${Math.ceil(wait / 1000)} s more`);
      return wait > 0;
    };
    if (backedOff()) return;
    // The queue needs no bound of its own: everything in it is a connection not yet authenticated,
    // which the pending caps of broker/server.ts bound in total and per address.
    const release = await slots.acquire(recent.has(addr));
    try {
      if (!release) return refuse(done, client, RC.serverUnavailable, `${d.limits().auth.maxWaiting} logins already waiting for verification`);
      if (client.closed) return; // gave up while queued: no KDF for nobody
      // Again after the wait: the failures of those queued before it may have started a back-off.
      if (backedOff()) return;
      // Charged only now, so a burst from one address costs the budget no more than its free failures.
      if (!recent.has(addr) && !budget.take(performance.now())) return refuse(done, client, RC.serverUnavailable, `verification budget for new addresses spent (${d.limits().auth.newAddressRate}/s): try again later`);
      const result = await store!.verify(username, password);
      if (!result.ok) {
        backoff.failed(addr);
        return refuse(done, client, RC.badCredentials, result.reason);
      }
      backoff.succeeded(addr);
      recent.add(addr);
      accept(client, principalFrom(result.identity), done);
    } finally {
      release?.();
    }
  };

  return {
    authenticate(client, username, password, done) {
      void (async () => {
        const cn = peerCommonName(client);
        if (cn !== undefined && store) {
          // A verified client certificate is the credential; its CN names the identity.
          const identity = store.get(cn);
          if (!identity) return refuse(done, client, RC.notAuthorized, `certificate CN "${cn}" is not a live identity`);
          if (username !== undefined && username !== cn) return refuse(done, client, RC.badCredentials, `username "${username}" does not match certificate CN "${cn}"`);
          return accept(client, principalFrom(identity), done);
        }
        if (username === undefined || !store) {
          if (!d.allowAnonymous) return refuse(done, client, RC.notAuthorized, 'anonymous clients are not allowed (no username; the broker runs without --allow-anonymous)');
          return accept(client, anonymous, done);
        }
        if (password === undefined) return refuse(done, client, RC.badCredentials, `no password given for "${username}"`);
        await verifyPassword(client, username, password, done);
      })().catch((err: Error) => refuse(done, client, RC.notAuthorized, `authentication failed: ${err.message}`));
    },

    namespacedClientId(client, clientId, username) {
      const claimed = username ?? peerCommonName(client);
      if (claimed === undefined || !store) return clientId;
      const identity = store.get(claimed);
      if (!identity || identity.role === 'node') return clientId;
      if (clientId === claimed || clientId.startsWith(`${claimed}/`)) return clientId;
      return `${claimed}/${clientId === '' ? randomUUID() : clientId}`;
    },
  };
}

export function addressOf(client: Client): string {
  return (client.conn as { remoteAddress?: string }).remoteAddress ?? 'unknown address';
}

/** CN of a verified TLS client certificate, if the connection has one. */
export function peerCommonName(client: Client): string | undefined {
  const conn = client.conn as Partial<TLSSocket>;
  if (typeof conn.getPeerCertificate !== 'function' || !conn.authorized) return undefined;
  const cn = conn.getPeerCertificate().subject?.CN;
  return typeof cn === 'string' && cn !== '' ? cn : undefined;
}
