import { isDeviceId } from '../shared/topics.js';

/**
 * Who may publish to and read from which ferry topic. Pure functions of (principal, topic) so the
 * same table drives the aedes hooks, the tests and the Mosquitto ACL we ship (docs/broker.md has the
 * table in words). Topics outside the prefix are a plain broker: everyone who got in may use them.
 */
export type Role = 'node' | 'agent' | 'operator';

export interface Principal {
  /** `anonymous` is a client without a username, admitted only with allowAnonymous. */
  role: Role | 'anonymous';
  /** Username (node: the device id). Empty for anonymous clients. */
  id: string;
  /** Node only: the groups it belongs to (it reads `P/g/<group>/dn`). */
  groups: readonly string[];
  /** Agent only: which nodes it serves, see {@link servesMatcher}. */
  serves: readonly string[];
}

/** A ferry topic taken apart. `invalid` is anything under the prefix that is not in the topic table. */
export type TopicClass =
  | { kind: 'outside' }
  | { kind: 'invalid' }
  | { kind: 'up' | 'dn' | 'status' | 'presence'; id: string }
  /** The broker's retained facts about a node (its groups): written by the broker only. */
  | { kind: 'info'; id: string }
  /** An operator's retained signed rollout document. */
  | { kind: 'rollout'; id: string }
  /** An agent's retained state in a rollout; `agent` is the agent's identity name. */
  | { kind: 'rollout-state'; id: string; agent: string }
  | { kind: 'group-dn'; group: string }
  | { kind: 'manifest'; hw: string; version: string }
  | { kind: 'part'; hw: string; version: string; index: number }
  /** An agent's retained verdict on a release; `agent` is the agent's identity name. */
  | { kind: 'release-status'; hw: string; version: string; agent: string }
  /** An operator's retained withdraw marker of a release. */
  | { kind: 'withdrawn'; hw: string; version: string }
  /** An agent's live events; `agent` is its identity name. */
  | { kind: 'agent-events'; agent: string }
  /** An operator's request for event history, to every agent; `operator` is the requester's name. */
  | { kind: 'events-request'; operator: string }
  /** An agent's answer to one operator's history request. */
  | { kind: 'events-response'; agent: string; operator: string };

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/;
const VERSION = /^[0-9A-Za-z.+-]{1,32}$/;
const ROLLOUT_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** Group names share the hardware-class syntax: a safe single topic level. */
export function isGroupName(name: string): boolean {
  return NAME.test(name);
}

export class TopicAcl {
  readonly prefix: string;
  private readonly levels: string[];
  private readonly depth: number;
  private readonly inside: string;

  constructor(prefix: string) {
    this.prefix = prefix;
    this.levels = prefix.split('/');
    this.depth = this.levels.length;
    this.inside = `${prefix}/`;
  }

  classify(topic: string): TopicClass {
    // The prefix itself ("ferry") counts as inside: `ferry/#` matches it, so it must not be a loophole.
    if (topic !== this.prefix && !topic.startsWith(this.inside)) return { kind: 'outside' };
    const rest = topic === this.prefix ? [] : topic.slice(this.inside.length).split('/');
    if (rest[0] === 'd' && rest.length === 3 && isDeviceId(rest[1])) {
      const sub = rest[2];
      if (sub === 'up' || sub === 'dn' || sub === 'status' || sub === 'presence' || sub === 'info') return { kind: sub, id: rest[1] };
    }
    if (rest[0] === 'rollout' && ROLLOUT_ID.test(rest[1] ?? '')) {
      if (rest.length === 2) return { kind: 'rollout', id: rest[1] };
      if (rest.length === 4 && rest[2] === 'state' && isDeviceId(rest[3])) return { kind: 'rollout-state', id: rest[1], agent: rest[3] };
    }
    if (rest[0] === 'a' && isDeviceId(rest[1] ?? '') && rest[2] === 'events') {
      if (rest.length === 3) return { kind: 'agent-events', agent: rest[1] };
      if (rest.length === 5 && rest[3] === 'res' && isDeviceId(rest[4])) return { kind: 'events-response', agent: rest[1], operator: rest[4] };
    }
    if (rest[0] === 'e' && rest.length === 3 && rest[1] === 'req' && isDeviceId(rest[2])) return { kind: 'events-request', operator: rest[2] };
    if (rest[0] === 'g' && rest.length === 3 && rest[2] === 'dn' && isGroupName(rest[1])) return { kind: 'group-dn', group: rest[1] };
    if (rest[0] === 'r' && NAME.test(rest[1] ?? '') && VERSION.test(rest[2] ?? '')) {
      if (rest.length === 4 && rest[3] === 'manifest') return { kind: 'manifest', hw: rest[1], version: rest[2] };
      if (rest.length === 4 && rest[3] === 'withdrawn') return { kind: 'withdrawn', hw: rest[1], version: rest[2] };
      if (rest.length === 5 && rest[3] === 'status' && isDeviceId(rest[4])) return { kind: 'release-status', hw: rest[1], version: rest[2], agent: rest[4] };
      if (rest.length === 5 && rest[3] === 'part' && /^(0|[1-9][0-9]{0,5})$/.test(rest[4])) {
        return { kind: 'part', hw: rest[1], version: rest[2], index: Number(rest[4]) };
      }
    }
    return { kind: 'invalid' };
  }

  /**
   * May `p` publish on `topic`? Presence has no publisher: only the broker itself writes it, through
   * aedes.publish, which bypasses authorizePublish.
   */
  canPublish(p: Principal, topic: string, serves: (id: string) => boolean, servesGroup: (g: string) => boolean): boolean {
    const c = this.classify(topic);
    switch (c.kind) {
      case 'outside':
        return true;
      case 'up':
        return p.role === 'node' && p.id === c.id;
      case 'dn':
      case 'status':
        return p.role === 'agent' && serves(c.id);
      case 'group-dn':
        return p.role === 'agent' && servesGroup(c.group);
      case 'manifest':
      case 'part':
      case 'withdrawn':
      case 'rollout':
        return p.role === 'operator';
      case 'release-status':
      case 'agent-events':
      case 'events-response':
        // An agent speaks only for itself: the level after the kind is its identity name.
        return p.role === 'agent' && p.id === c.agent;
      case 'events-request':
        // Answers go to the topic named after the requester: one operator cannot read another's.
        return p.role === 'operator' && p.id === c.operator;
      case 'rollout-state':
        return p.role === 'agent' && p.id === c.agent;
      default:
        return false;
    }
  }

  /** May `p` receive a message published on `topic`? Used for exact subscriptions and every forward. */
  canRead(p: Principal, topic: string, serves: (id: string) => boolean): boolean {
    const c = this.classify(topic);
    switch (c.kind) {
      case 'outside':
        return true;
      case 'dn':
        return p.role === 'node' && p.id === c.id;
      case 'group-dn':
        return p.role === 'node' && p.groups.includes(c.group);
      case 'up':
        return p.role === 'agent' && serves(c.id);
      case 'status':
      case 'presence':
      case 'info':
        return p.role === 'operator' || (p.role === 'agent' && serves(c.id));
      case 'manifest':
      case 'part':
      case 'withdrawn':
      case 'release-status':
      case 'rollout':
      case 'rollout-state':
        return p.role === 'agent' || p.role === 'operator';
      case 'agent-events':
        return p.role === 'operator';
      case 'events-response':
        return p.role === 'operator' && p.id === c.operator;
      case 'events-request':
        return p.role === 'agent';
      default:
        return false;
    }
  }

  /**
   * Subscription decision for a filter. Exact topics get the precise answer. A wildcard filter is
   * granted when it can match at least one topic `p` may read (outside the prefix, or one of its
   * role's templates); what it then receives is narrowed message by message by canRead in
   * authorizeForward, so `#` works for everyone without leaking ferry traffic.
   */
  canSubscribe(p: Principal, filter: string, serves: (id: string) => boolean): boolean {
    if (!filter.includes('+') && !filter.includes('#')) return this.canRead(p, filter, serves);
    const f = filter.split('/');
    if (this.reachesOutside(f)) return true;
    return this.readTemplates(p).some((t) => filtersIntersect(f, t.split('/')));
  }

  /** True when the filter can match some topic that is not under the prefix. */
  private reachesOutside(f: string[]): boolean {
    for (let i = 0; i < this.depth; i++) {
      if (i >= f.length) return true;
      if (f[i] === '#' || f[i] === '+' || f[i] !== this.levels[i]) return true;
    }
    return false;
  }

  /** Filters covering (a superset of) what a role may read; the exact check happens per message. */
  private readTemplates(p: Principal): string[] {
    const P = this.prefix;
    switch (p.role) {
      case 'node':
        return [`${P}/d/${p.id}/dn`, ...p.groups.map((g) => `${P}/g/${g}/dn`)];
      case 'agent':
        return [`${P}/d/+/up`, `${P}/d/+/status`, `${P}/d/+/presence`, `${P}/d/+/info`, `${P}/e/req/+`, ...releaseTemplates(P)];
      case 'operator':
        return [`${P}/d/+/status`, `${P}/d/+/presence`, `${P}/d/+/info`, `${P}/a/+/events`, `${P}/a/+/events/res/${p.id}`, ...releaseTemplates(P)];
      default:
        return [];
    }
  }
}

function releaseTemplates(P: string): string[] {
  return [`${P}/r/+/+/manifest`, `${P}/r/+/+/part/+`, `${P}/r/+/+/withdrawn`, `${P}/r/+/+/status/+`, `${P}/rollout/+`, `${P}/rollout/+/state/+`];
}

/** Can two MQTT topic filters (split into levels) match a common topic? */
export function filtersIntersect(a: string[], b: string[], i = 0): boolean {
  for (; ; i++) {
    const x = a[i];
    const y = b[i];
    if (x === '#' || y === '#') return true;
    if (x === undefined || y === undefined) return x === y;
    if (x !== '+' && y !== '+' && x !== y) return false;
  }
}

/**
 * An agent's `serves` list: `*` (every node), device-id globs (`hall-*`, `node-?`), or `group:NAME`
 * (NAME may be a glob too). Globs only know `*` and `?` so they can never be a regex injection.
 */
export function servesMatcher(serves: readonly string[]): { device(id: string, groups: readonly string[]): boolean; group(g: string): boolean; all: boolean } {
  const all = serves.includes('*');
  const ids: RegExp[] = [];
  const groups: RegExp[] = [];
  for (const s of serves) {
    if (s.startsWith('group:')) groups.push(globToRegExp(s.slice(6)));
    else ids.push(globToRegExp(s));
  }
  return {
    all,
    device: (id, gs) => all || ids.some((r) => r.test(id)) || gs.some((g) => groups.some((r) => r.test(g))),
    group: (g) => all || groups.some((r) => r.test(g)),
  };
}

export function globToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`);
}

/** Validates one entry of a serves list; returns an error message naming the problem, or undefined. */
export function checkServesEntry(s: string): string | undefined {
  const glob = s.startsWith('group:') ? s.slice(6) : s;
  if (glob === '') return `serves entry "${s}" is empty`;
  if (!/^[A-Za-z0-9_.:*?-]+$/.test(glob)) return `serves entry "${s}" may only hold id characters and the globs * and ?`;
  return undefined;
}
