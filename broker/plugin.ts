import type { TLSSocket } from 'node:tls';
import type { Aedes, AedesPublishPacket, AuthenticateError, Client, ConnackPacket, PublishPacket, Subscription } from 'aedes';
import { decodeUp, MsgType } from '../shared/messages.js';
import { DEFAULT_PREFIX, topics as makeTopics } from '../shared/topics.js';
import { servesMatcher, TopicAcl, type Principal } from './acl.js';
import type { Identity, IdentityStore } from './identity-store.js';
import { payloadCap, resolveLimits, TokenBucket, type Limits, type PayloadLimits } from './limits.js';
import { PresencePublisher } from './presence.js';

/**
 * The ferry aedes plugin: authentication against an {@link IdentityStore}, the topic ACL of
 * docs/broker.md, payload and rate limits, CBOR validation of up messages, and node presence.
 * It only sets aedes hooks and listens to aedes events, so it loads into any aedes 1.x instance.
 */
export type LogFn = (level: 'info' | 'warn' | 'error', msg: string) => void;

export interface FerryPluginOptions {
  /** Identities. Without a store every client is anonymous: no ferry topic is reachable. */
  store?: IdentityStore;
  prefix?: string;
  /** Admit clients without a username (plain-broker use outside the prefix). Default: true without a store, false with one. */
  allowAnonymous?: boolean;
  limits?: { payload?: Partial<PayloadLimits>; rate?: Partial<Limits['rate']> };
  log?: LogFn;
  /** How often to look for identity changes made by other processes (ms). Default 1000. */
  storePollMs?: number;
}

export interface FerryPlugin {
  readonly prefix: string;
  /** Live authenticated sessions by client id (read-only view, for status and tests). */
  principalOf(clientId: string): Principal | undefined;
  /** Applies identity changes now (revocations disconnect) instead of waiting for the poll. */
  refresh(): void;
  /** Stops the store poll. Hooks stay installed: close the aedes instance to stop the broker. */
  close(): void;
}

interface Session {
  client: Client;
  principal: Principal;
  bucket: TokenBucket;
  /** Agent only: device id → served? Cleared whenever the identity store changes. */
  servesCache: Map<string, boolean>;
  serves: (id: string) => boolean;
  servesGroup: (group: string) => boolean;
}

const RC = { identifierRejected: 2, badCredentials: 4, notAuthorized: 5 } as const;

export function installFerryPlugin(aedes: Aedes, opts: FerryPluginOptions = {}): FerryPlugin {
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  makeTopics(prefix); // validates the prefix, throwing a message that names it
  const acl = new TopicAcl(prefix);
  const store = opts.store;
  const allowAnonymous = opts.allowAnonymous ?? !store;
  const limits = resolveLimits(opts.limits);
  const log: LogFn = opts.log ?? (() => {});
  const sessions = new Map<Client, Session>();
  // Packets refused after the ack was promised: authorizePublish cannot drop without disconnecting in
  // aedes, so it marks the packet and the wrapped publish below swallows it (Mosquitto does the same).
  const dropped = new WeakSet<object>();
  const presence = new PresencePublisher(aedes, prefix, log);

  const makeSession = (client: Client, principal: Principal): Session => {
    const matcher = servesMatcher(principal.serves);
    const servesCache = new Map<string, boolean>();
    const needsGroups = principal.serves.some((s) => s.startsWith('group:'));
    return {
      client,
      principal,
      bucket: new TokenBucket(limits.rate[principal.role]),
      servesCache,
      serves:
        principal.role !== 'agent'
          ? () => false
          : matcher.all
            ? () => true
            : (id) => {
                let v = servesCache.get(id);
                if (v === undefined) {
                  v = matcher.device(id, needsGroups && store ? store.groupsOf(id) : []);
                  servesCache.set(id, v);
                }
                return v;
              },
      servesGroup: principal.role === 'agent' ? matcher.group : () => false,
    };
  };

  const principalFrom = (identity: Identity): Principal => ({
    role: identity.role,
    id: identity.username,
    groups: identity.groups,
    serves: identity.serves,
  });

  const anonymous: Principal = { role: 'anonymous', id: '', groups: [], serves: [] };
  const who = (s: Session | undefined, client: Client | null) =>
    s ? (s.principal.role === 'anonymous' ? `anonymous client ${client?.id}` : `${s.principal.role} ${s.principal.id}`) : `client ${client?.id ?? '(none)'}`;

  const refuse = (done: (e: AuthenticateError | null, ok: boolean | null) => void, client: Client, code: number, why: string) => {
    log('warn', `connect refused for client ${JSON.stringify(client.id)}: ${why}`);
    const err = new Error(why) as AuthenticateError;
    (err as { returnCode: number }).returnCode = code;
    done(err, null);
  };

  /** A client id that names another identity would let aedes' takeover kick that identity off. */
  const clientIdClash = (clientId: string, username: string | undefined) =>
    store !== undefined && clientId !== username && store.get(clientId) !== undefined;

  aedes.authenticate = (client, username, password, done) => {
    void (async () => {
      const cn = peerCommonName(client);
      if (cn !== undefined && store) {
        // A verified client certificate is the credential; its CN names the identity.
        const identity = store.get(cn);
        if (!identity) return refuse(done, client, RC.notAuthorized, `certificate CN "${cn}" is not a live identity`);
        if (username !== undefined && username !== cn) return refuse(done, client, RC.badCredentials, `username "${username}" does not match certificate CN "${cn}"`);
        return admit(client, principalFrom(identity), done);
      }
      if (username === undefined || !store) {
        if (!allowAnonymous) return refuse(done, client, RC.notAuthorized, 'anonymous clients are not allowed (no username; the broker runs without --allow-anonymous)');
        if (clientIdClash(client.id, undefined)) return refuse(done, client, RC.identifierRejected, `client id "${client.id}" belongs to a provisioned identity`);
        return admit(client, anonymous, done);
      }
      if (password === undefined) return refuse(done, client, RC.badCredentials, `no password given for "${username}"`);
      const result = await store.verify(username, password);
      if (!result.ok) return refuse(done, client, RC.badCredentials, result.reason);
      admit(client, principalFrom(result.identity), done);
    })().catch((err: Error) => refuse(done, client, RC.notAuthorized, `authentication failed: ${err.message}`));
  };

  const admit = (client: Client, principal: Principal, done: (e: AuthenticateError | null, ok: boolean | null) => void) => {
    if (principal.role === 'node' && client.id !== principal.id) {
      return refuse(done, client, RC.identifierRejected, `node "${principal.id}" must connect with client id "${principal.id}", not "${client.id}"`);
    }
    if (principal.role !== 'node' && principal.role !== 'anonymous' && clientIdClash(client.id, principal.id)) {
      return refuse(done, client, RC.identifierRejected, `client id "${client.id}" belongs to another identity`);
    }
    sessions.set(client, makeSession(client, principal));
    done(null, true);
  };

  aedes.authorizePublish = (client, packet, done) => {
    try {
      if (packet.topic.startsWith('$SYS')) return done(new Error('$SYS topics are reserved for the broker'));
      if (client === null) {
        // A will of a client that is gone: allowed outside the prefix only (wills cannot be re-checked).
        return acl.classify(packet.topic).kind === 'outside' ? done(null) : done(new Error(`will on ${packet.topic} refused`));
      }
      const s = sessions.get(client);
      if (!s) return done(new Error('publish from a client without a session'));
      if (!s.bucket.take()) {
        const rl = limits.rate[s.principal.role];
        log('warn', `disconnecting ${who(s, client)}: publish rate above ${rl.rate}/s (burst ${rl.burst})`);
        return done(new Error('publish rate limit exceeded'));
      }
      const c = acl.classify(packet.topic);
      if (c.kind === 'outside') return done(null);
      const drop = (why: string) => {
        log('warn', `dropped publish from ${who(s, client)} on ${packet.topic}: ${why}`);
        dropped.add(packet);
        done(null);
      };
      if (!acl.canPublish(s.principal, packet.topic, s.serves, s.servesGroup)) return drop(`a ${s.principal.role} may not publish here`);
      const cap = payloadCap(limits.payload, c);
      const size = packet.payload.length;
      if (cap !== undefined && size > cap) return drop(`payload of ${size} bytes exceeds the ${c.kind} limit of ${cap}`);
      if (c.kind === 'up') {
        try {
          const msg = decodeUp(packet.payload as Buffer);
          if (msg.type === MsgType.hello && msg.deviceId !== c.id) return drop(`hello names device "${msg.deviceId}", topic names "${c.id}"`);
        } catch (err) {
          return drop(`malformed up message: ${(err as Error).message}`);
        }
      }
      // Up and dn traffic is per connection; a retained chunk or hello would be replayed forever.
      if ((c.kind === 'up' || c.kind === 'dn' || c.kind === 'group-dn') && packet.retain) packet.retain = false;
      done(null);
    } catch (err) {
      log('error', `authorizePublish failed on ${packet.topic}: ${(err as Error).message}`);
      done(err as Error);
    }
  };

  const publish = aedes.publish.bind(aedes) as unknown as (packet: PublishPacket, client: Client | null, done: (err?: Error) => void) => void;
  // Shadows the class method on this instance only; aedes calls broker.publish(packet, client, done)
  // for every client PUBLISH after authorizePublish, with the very packet object that was checked.
  Object.defineProperty(aedes, 'publish', {
    configurable: true,
    writable: true,
    value: (packet: PublishPacket, client: Client | null | ((e?: Error) => void), done?: (err?: Error) => void) => {
      if (typeof client === 'function') return publish(packet, null, client);
      if (dropped.has(packet)) return (done ?? (() => {}))();
      return publish(packet, client, done ?? (() => {}));
    },
  });

  aedes.authorizeSubscribe = (client, sub: Subscription, done) => {
    const s = sessions.get(client);
    if (!s) return done(new Error('subscribe from a client without a session'));
    try {
      if (acl.canSubscribe(s.principal, sub.topic, s.serves)) return done(null, sub);
      log('warn', `refused subscription of ${who(s, client)} to ${sub.topic}`);
      done(null, null);
    } catch (err) {
      log('error', `authorizeSubscribe failed on ${sub.topic}: ${(err as Error).message}`);
      done(null, null);
    }
  };

  aedes.authorizeForward = (client, packet: AedesPublishPacket) => {
    const topic = packet.topic;
    // Fast path: the bulk of a busy plain broker never enters the ACL.
    if (!topic.startsWith(prefix)) return packet;
    const s = sessions.get(client);
    if (!s) return null;
    return acl.canRead(s.principal, topic, s.serves) ? packet : null;
  };

  // Presence hangs off CONNACK rather than clientReady: aedes handles the client's next packets
  // (its SUBSCRIBE, then its Hello) as soon as CONNACK is out, before clientReady fires.
  const onConnack = (packet: ConnackPacket, client: Client) => {
    const s = packet.returnCode === 0 ? sessions.get(client) : undefined;
    if (s?.principal.role === 'node') presence.connected(client, s.principal.id);
  };
  const onSubscribe = (subs: Subscription[], client: Client) => {
    const s = sessions.get(client);
    if (s?.principal.role === 'node') presence.subscribed(client, s.principal.id, subs);
  };
  const onDisconnect = (client: Client) => {
    const s = sessions.get(client);
    sessions.delete(client);
    if (s?.principal.role === 'node') presence.disconnected(client, s.principal.id);
  };
  const onClientError = (client: Client, err: Error) => {
    const s = sessions.get(client);
    if (s) log('warn', `${who(s, client)}: ${err.message}`);
  };
  aedes.on('connackSent', onConnack);
  aedes.on('subscribe', onSubscribe);
  aedes.on('clientDisconnect', onDisconnect);
  aedes.on('clientError', onClientError);

  const refresh = () => {
    if (!store || !store.changedSinceLastCheck()) return;
    for (const s of sessions.values()) {
      if (s.principal.role === 'anonymous') continue;
      const identity = store.get(s.principal.id);
      if (!identity || identity.role !== s.principal.role) {
        log('info', `disconnecting ${who(s, s.client)}: identity revoked`);
        sessions.delete(s.client);
        s.client.close();
        continue;
      }
      // Groups and serves may have changed: rebuild the matcher and forget cached decisions.
      const fresh = makeSession(s.client, principalFrom(identity));
      s.principal = fresh.principal;
      s.serves = fresh.serves;
      s.servesGroup = fresh.servesGroup;
      s.servesCache = fresh.servesCache;
    }
  };
  const timer = store ? setInterval(refresh, opts.storePollMs ?? 1000) : undefined;
  timer?.unref();

  return {
    prefix,
    principalOf(clientId) {
      for (const s of sessions.values()) if (s.client.id === clientId) return s.principal;
      return undefined;
    },
    refresh,
    close() {
      if (timer) clearInterval(timer);
      presence.close();
      aedes.off('connackSent', onConnack);
      aedes.off('subscribe', onSubscribe);
      aedes.off('clientDisconnect', onDisconnect);
      aedes.off('clientError', onClientError);
    },
  };
}

/** CN of a verified TLS client certificate, if the connection has one. */
function peerCommonName(client: Client): string | undefined {
  const conn = client.conn as Partial<TLSSocket>;
  if (typeof conn.getPeerCertificate !== 'function' || !conn.authorized) return undefined;
  const cn = conn.getPeerCertificate().subject?.CN;
  return typeof cn === 'string' && cn !== '' ? cn : undefined;
}
