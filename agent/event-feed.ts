import { decodeHistoryRequest, EVENT_LIMITS, packEvents, type EventDoc } from '../shared/events.js';
import type { LogFn } from '../shared/log.js';
import { TokenBucket, type Rate } from '../shared/token-bucket.js';
import type { Topics } from '../shared/topics.js';
import type { AgentStore, StoredEvent } from './store.js';

export interface EventFeedDeps {
  store: AgentStore;
  topics: Topics;
  /** The agent's name: the topic level its events go out under. */
  name: string;
  /** Publishes on the operators' link; false when refused (link down, backlog full). */
  publish(topic: string, doc: string): boolean;
  log: LogFn;
  now?: () => number;
  /** Live batching and request rate; defaults below. */
  limits?: Partial<EventFeedLimits>;
}

export interface EventFeedLimits {
  /** Events are gathered this long and go out as one message. */
  flushMs: number;
  /** Events one batch holds at most; more in the same interval are counted as dropped (history keeps them). */
  maxBatch: number;
  /** History requests answered, across all operators. */
  requests: Rate;
}

export const EVENT_FEED_DEFAULTS: EventFeedLimits = { flushMs: 250, maxBatch: 200, requests: { rate: 5, burst: 20 } };

/**
 * The agent's event log on MQTT (docs/protocol.md 2.3). Every row AgentStore.event writes goes out
 * live, coalesced: one message per `flushMs` with at most `maxBatch` events, so a flood of events
 * costs the link at most 1000 / flushMs messages a second and the agent a bounded buffer; what does not
 * fit is counted (`dropped`) and stays in SQLite for history requests. Requests are answered from
 * SQLite, one bounded page each, at a bounded rate.
 */
export class EventFeed {
  private readonly limits: EventFeedLimits;
  private readonly now: () => number;
  private readonly requests: TokenBucket;
  private batch: EventDoc[] = [];
  private dropped = 0;
  private timer: NodeJS.Timeout | undefined;
  private refusedRequests = 0;
  private lastRefusalLog = 0;
  /** Live messages published, history requests answered and refused by the rate limit (tests, metrics). */
  published = 0;
  answered = 0;
  refused = 0;

  constructor(private readonly d: EventFeedDeps) {
    this.limits = { ...EVENT_FEED_DEFAULTS, ...d.limits };
    this.now = d.now ?? Date.now;
    this.requests = new TokenBucket(this.limits.requests, this.now());
  }

  start(): void {
    this.d.store.on('event', this.onEvent);
  }

  stop(): void {
    this.d.store.off('event', this.onEvent);
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private readonly onEvent = (e: StoredEvent): void => {
    if (this.batch.length >= this.limits.maxBatch) this.dropped++;
    else this.batch.push({ seq: e.seq, at: e.at, device: e.node, kind: e.kind, detail: e.detail });
    if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), this.limits.flushMs);
      this.timer.unref();
    }
  };

  /** Sends the gathered events as one message (now: tests and shutdown call it directly). */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.batch.length === 0 && this.dropped === 0) return;
    const newestFirst = this.batch.reverse();
    const earlier = this.dropped;
    // Events past the message size cap count as dropped too.
    const { json: doc } = packEvents(newestFirst, (events) => {
      const dropped = earlier + newestFirst.length - events.length;
      return { v: 1, agent: this.d.name, events, ...(dropped ? { dropped } : {}) };
    });
    this.batch = [];
    this.dropped = 0;
    // Refused (link down, backlog full): the events are in SQLite; a live viewer asks for history.
    if (this.d.publish(this.d.topics.agentEvents(this.d.name), doc)) this.published++;
  }

  /** A history request on `P/e/req/<operator>`: answered on `P/a/<agent>/events/res/<operator>`. */
  onRequest(operator: string, payload: Buffer): void {
    if (!this.requests.take(this.now())) {
      this.refused++;
      this.refusedRequests++;
      if (this.now() - this.lastRefusalLog >= 10_000) {
        this.d.log('warn', `event history requests above ${this.limits.requests.rate}/s: ${this.refusedRequests} not answered`, { operator, reason: 'rateLimited' });
        this.lastRefusalLog = this.now();
        this.refusedRequests = 0;
      }
      return;
    }
    this.answered++;
    const topic = this.d.topics.eventsResponse(this.d.name, operator);
    let req;
    try {
      req = decodeHistoryRequest(payload);
    } catch (err) {
      const id = requestIdOf(payload);
      this.d.publish(topic, JSON.stringify({ v: 1, id, agent: this.d.name, events: [], more: false, error: (err as Error).message }));
      return;
    }
    const limit = Math.min(req.limit ?? EVENT_LIMITS.defaultHistory, EVENT_LIMITS.maxHistory);
    // One row more than asked for says whether there is more.
    const rows = this.d.store.eventPage(req.device, req.before, limit + 1);
    const page = rows.slice(0, limit).map((e): EventDoc => ({ seq: e.seq, at: e.at, device: e.node, kind: e.kind, detail: e.detail }));
    const { json } = packEvents(page, (events, more) => ({ v: 1, id: req.id, agent: this.d.name, events, more: more || rows.length > limit }));
    this.d.publish(topic, json);
  }
}

/** The id of a request that did not decode, when one can be read (so the error reaches its waiter). */
function requestIdOf(payload: Buffer): string {
  if (payload.length > EVENT_LIMITS.maxRequestBytes) return '';
  try {
    const id = (JSON.parse(payload.toString('utf8')) as { id?: unknown }).id;
    return typeof id === 'string' ? id.slice(0, EVENT_LIMITS.maxRequestId) : '';
  } catch {
    return '';
  }
}
