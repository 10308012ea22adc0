import type { Aedes, AedesPublishPacket, Client, ConnackPacket, PublishPacket, Subscription } from 'aedes';
import type { LogFn } from '../shared/log.js';
import { decodeUp, MsgType } from '../shared/messages.js';
import { DEFAULT_PREFIX, topics as makeTopics } from '../shared/topics.js';
import { servesMatcher, TopicAcl, type Principal } from './acl.js';
import { makeAuthenticator, principalFrom, RC, type Done } from './authenticate.js';
import { backlogOf, guardDeliveries, noteForwarded } from './delivery-guard.js';
import { frameGuardOf } from './frame-guard.js';
import type { IdentityStore } from './identity-store.js';
import { TokenBucket } from '../shared/token-bucket.js';
import { payloadCap, resolveLimits, type Limits, type LimitsInput } from './limits.js';
import { PresencePublisher } from './presence.js';
import { RetainedQuota } from './retained-quota.js';

/**
 * The ferry aedes plugin: authentication against an {@link IdentityStore}, the topic ACL of
 * docs/broker.md, payload, retained and rate limits, CBOR validation of up messages, slow-subscriber
 * isolation and node presence. It sets aedes hooks, wraps each client's drain wait
 * (broker/delivery-guard.ts) and listens to aedes events, so it loads into any aedes 1.x instance.
 * Packet size caps need the socket: broker/server.ts puts broker/frame-guard.ts in front of aedes.
 */
export type { LogFn };

export interface FerryPluginOptions {
  /** Identities. Without a store every client is anonymous: no ferry topic is reachable. */
  store?: IdentityStore;
  prefix?: string;
  /** Admit clients without a username (plain-broker use outside the prefix). Default: true without a store, false with one. */
  allowAnonymous?: boolean;
  limits?: LimitsInput;
  log?: LogFn;
  /** How often to look for identity changes made by other processes (ms). Default 1000. */
  storePollMs?: number;
}

export interface FerryPlugin {
  readonly prefix: string;
  /** The limits in force (defaults merged with the options). */
  readonly limits: Limits;
  /** Live authenticated sessions by client id (read-only view, for status and tests). */
  principalOf(clientId: string): Principal | undefined;
  /** Applies identity changes now (revocations disconnect) instead of waiting for the poll. */
  refresh(): void;
  /** Counters and gauges for metrics: connected clients by role, refused logins by reason. */
  stats(): BrokerStats;
  /** Counts a socket a guard closed (called by broker/server.ts, which owns the sockets). */
  refusedConnection(why: ConnectionRefusal): void;
  /** Stops the store poll. Hooks stay installed: close the aedes instance to stop the broker. */
  close(): void;
}

export interface BrokerStats {
  /** Authenticated sessions now, by role. */
  clients: Record<Principal['role'], number>;
  /** Refused CONNECTs since start, by reason (docs/observability.md). */
  authFailures: Record<AuthFailure, number>;
  /** Sockets the broker's guards closed since start: connection rate, caps on unauthenticated connections, packet size caps. */
  connectionsRefused: Record<ConnectionRefusal, number>;
}

export type ConnectionRefusal = 'rate' | 'pending' | 'frame';

export type AuthFailure = 'badCredentials' | 'notAuthorized' | 'identifierRejected' | 'serverUnavailable';

const FAILURE_OF_CODE: Record<number, AuthFailure> = { [RC.badCredentials]: 'badCredentials', [RC.notAuthorized]: 'notAuthorized', [RC.identifierRejected]: 'identifierRejected', [RC.serverUnavailable]: 'serverUnavailable' };

interface Session {
  client: Client;
  principal: Principal;
  bucket: TokenBucket;
  /** Agent only: device id → served? Cleared whenever the identity store changes. */
  servesCache: Map<string, boolean>;
  serves: (id: string) => boolean;
  servesGroup: (group: string) => boolean;
  /** QoS 0 deliveries dropped because the client does not read, since the last log line about it. */
  qos0Dropped: number;
  lastDropLog: number;
}

/** At most one log line per client per this interval about dropped QoS 0 deliveries. */
const DROP_LOG_MS = 10_000;

/** Who a retained message is charged to: the identity, or one shared account for all anonymous clients. */
const retainOwner = (p: Principal) => (p.role === 'anonymous' ? 'anonymous' : `${p.role}:${p.id}`);

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
  // The node's groups, told to the agents by the broker itself: a node cannot forge them (only
  // the broker writes `P/d/<id>/info`; docs/protocol.md section 2). Republished when they change.
  const infoSent = new Map<string, string>();
  const publishInfo = (id: string, groups: readonly string[]) => {
    const doc = JSON.stringify({ v: 1, groups: [...groups].sort() });
    if (infoSent.get(id) === doc) return;
    infoSent.set(id, doc);
    aedes.publish({ cmd: 'publish', topic: `${prefix}/d/${id}/info`, payload: Buffer.from(doc), qos: 1, retain: true, dup: false }, (err) => {
      if (err) log('warn', `info for ${id} not published: ${err.message}`);
    });
  };
  // A socket that sends no CONNECT holds a pending slot until this fires (aedes' default is 30 s).
  (aedes as unknown as { connectTimeout: number }).connectTimeout = limits.pending.connectTimeoutMs;

  const makeSession = (client: Client, principal: Principal): Session => {
    const matcher = servesMatcher(principal.serves);
    const servesCache = new Map<string, boolean>();
    const needsGroups = principal.serves.some((s) => s.startsWith('group:'));
    return {
      client,
      principal,
      bucket: new TokenBucket(limits.rate[principal.role], performance.now()),
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
      qos0Dropped: 0,
      lastDropLog: -Infinity,
    };
  };
  const who = (s: Session | undefined, client: Client | null) =>
    s ? (s.principal.role === 'anonymous' ? `anonymous client ${client?.id}` : `${s.principal.role} ${s.principal.id}`) : `client ${client?.id ?? '(none)'}`;

  const retained = new RetainedQuota();
  const clients = (aedes as unknown as { clients: Record<string, Client | undefined> }).clients;

  const authFailures: Record<AuthFailure, number> = { badCredentials: 0, notAuthorized: 0, identifierRejected: 0, serverUnavailable: 0 };
  const connectionsRefused: Record<ConnectionRefusal, number> = { rate: 0, pending: 0, frame: 0 };
  const auth = makeAuthenticator({
    refused(code) {
      const kind = FAILURE_OF_CODE[code];
      if (kind) authFailures[kind]++;
    },
    store,
    allowAnonymous,
    limits: () => limits,
    log,
    holder(clientId, self) {
      const held = clients[clientId];
      if (!held || held === self || held.closed) return undefined;
      return sessions.get(held)?.principal ?? null;
    },
    admit(client: Client, principal: Principal, done: Done) {
      sessions.set(client, makeSession(client, principal));
      frameGuardOf(client.conn)?.authenticate();
      done(null, true);
    },
  });

  const deliveryLimits = (client: Client) => {
    const role = sessions.get(client)?.principal.role ?? 'anonymous';
    return { dropQos0Above: limits.delivery.dropQos0Above, maxBacklog: limits.delivery.maxBacklog[role], drainTimeoutMs: limits.delivery.drainTimeoutMs };
  };

  aedes.preConnect = (client, packet, done) => {
    try {
      guardDeliveries(client, () => deliveryLimits(client), (why) => log('warn', `disconnecting ${who(sessions.get(client), client)}: ${why}`));
      packet.clientId = auth.namespacedClientId(client, packet.clientId, packet.username);
      done(null, true);
    } catch (err) {
      log('error', `preConnect failed: ${(err as Error).message}`);
      done(err as Error, false);
    }
  };

  aedes.authenticate = (client, username, password, done) => auth.authenticate(client, username, password, done);

  aedes.authorizePublish = (client, packet, done) => {
    try {
      if (packet.topic.startsWith('$SYS')) return done(new Error('$SYS topics are reserved for the broker'));
      if (client === null) {
        // A will of a client that is gone: allowed outside the prefix only (wills cannot be re-checked).
        return acl.classify(packet.topic).kind === 'outside' ? done(null) : done(new Error(`will on ${packet.topic} refused`));
      }
      const s = sessions.get(client);
      if (!s) return done(new Error('publish from a client without a session'));
      if (!s.bucket.take(performance.now())) {
        const rl = limits.rate[s.principal.role];
        log('warn', `disconnecting ${who(s, client)}: publish rate above ${rl.rate}/s (burst ${rl.burst})`);
        return done(new Error('publish rate limit exceeded'));
      }
      const c = acl.classify(packet.topic);
      const drop = (why: string) => {
        log('warn', `dropped publish from ${who(s, client)} on ${packet.topic}: ${why}`);
        dropped.add(packet);
        done(null);
      };
      if (!acl.canPublish(s.principal, packet.topic, s.serves, s.servesGroup)) return drop(`a ${s.principal.role} may not publish here`);
      const cap = payloadCap(limits.payload, c);
      const size = packet.payload.length;
      if (cap !== undefined && size > cap) return drop(`payload of ${size} bytes exceeds the ${c.kind === 'outside' ? 'plain-topic' : c.kind} limit of ${cap}`);
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
      if (packet.retain) {
        const verdict = retained.charge(retainOwner(s.principal), limits.retained[s.principal.role], packet.topic, size);
        if (!verdict.ok) return drop(`retained storage of this ${s.principal.role === 'anonymous' ? 'broker\'s anonymous clients' : s.principal.role}: ${verdict.reason}`);
      }
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
      const sys = sub.topic.startsWith('$');
      if (sys ? mayReadSys(s.principal) : acl.canSubscribe(s.principal, sub.topic, s.serves)) return done(null, sub);
      log('warn', `refused subscription of ${who(s, client)} to ${sub.topic}`, { client: client?.id, topic: sub.topic, reason: 'not authorized' });
      done(null, null);
    } catch (err) {
      log('error', `authorizeSubscribe failed on ${sub.topic}: ${(err as Error).message}`);
      done(null, null);
    }
  };

  aedes.authorizeForward = (client, packet: AedesPublishPacket) => {
    const s = sessions.get(client);
    if (!s) return null;
    if (packet.qos === 0) {
      const backlog = backlogOf(client);
      if (backlog > limits.delivery.dropQos0Above) {
        s.qos0Dropped++;
        const now = performance.now();
        if (now - s.lastDropLog >= DROP_LOG_MS) {
          log('warn', `dropped ${s.qos0Dropped} QoS 0 deliveries to ${who(s, client)}: ${backlog} bytes unread, above ${limits.delivery.dropQos0Above}`);
          s.lastDropLog = now;
          s.qos0Dropped = 0;
        }
        return null;
      }
    }
    const topic = packet.topic;
    let ok: boolean;
    if (topic.charCodeAt(0) === 36 /* $ */) ok = mayReadSys(s.principal);
    // Fast path: the bulk of a busy plain broker never enters the ACL.
    else ok = !topic.startsWith(prefix) || acl.canRead(s.principal, topic, s.serves);
    if (!ok) return null;
    noteForwarded(client, packet);
    return packet;
  };

  // Presence hangs off CONNACK rather than clientReady: aedes handles the client's next packets
  // (its SUBSCRIBE, then its Hello) as soon as CONNACK is out, before clientReady fires.
  const onConnack = (packet: ConnackPacket, client: Client) => {
    const s = packet.returnCode === 0 ? sessions.get(client) : undefined;
    if (s?.principal.role !== 'node') return;
    publishInfo(s.principal.id, s.principal.groups);
    presence.connected(client, s.principal.id);
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
    if (s && !(err as { logged?: boolean }).logged) log('warn', `${who(s, client)}: ${err.message}`);
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
      if (s.principal.role === 'node') publishInfo(s.principal.id, s.principal.groups);
    }
  };
  const timer = store ? setInterval(refresh, opts.storePollMs ?? 1000) : undefined;
  timer?.unref();

  return {
    prefix,
    limits,
    principalOf(clientId) {
      for (const s of sessions.values()) if (s.client.id === clientId) return s.principal;
      return undefined;
    },
    refresh,
    stats() {
      const clients = { node: 0, agent: 0, operator: 0, anonymous: 0 };
      for (const s of sessions.values()) clients[s.principal.role]++;
      return { clients, authFailures: { ...authFailures }, connectionsRefused: { ...connectionsRefused } };
    },
    refusedConnection(why) {
      connectionsRefused[why]++;
    },
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

/** `$SYS` lists every client id and subscription: for operators and agents only. */
function mayReadSys(p: Principal): boolean {
  return p.role === 'operator' || p.role === 'agent';
}
