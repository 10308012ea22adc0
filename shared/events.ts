import { isDeviceId } from './topics.js';

/**
 * The agent's event log over MQTT (docs/protocol.md section 2.3): live events, and history on
 * request. UTF-8 JSON like the other operator-facing documents. Pure: codecs and limits only.
 */

/** One event as it travels (a row of the agent's events table). */
export interface EventDoc {
  /** The agent's sequence number: increasing per agent, gaps where rows were trimmed. */
  seq: number;
  /** Unix milliseconds. */
  at: number;
  device: string | null;
  kind: string;
  detail: string;
}

export interface LiveEvents {
  v: 1;
  agent: string;
  events: EventDoc[];
  /** Events the agent recorded but did not publish live (rate limit): the history still has them. */
  dropped?: number;
}

export interface HistoryRequest {
  v: 1;
  /** Echoed in the response: tells a reply to this request from a late one to an earlier request. */
  id: string;
  device?: string;
  /** Most events wanted (newest first from `before`); capped at EVENT_LIMITS.maxHistory. */
  limit?: number;
  /** Only events with a smaller seq (paging back). */
  before?: number;
}

export interface HistoryResponse {
  v: 1;
  id: string;
  agent: string;
  /** Oldest first. */
  events: EventDoc[];
  /** More events match than were sent (limit or size cap): ask again with `before` = the first seq. */
  more: boolean;
  error?: string;
}

export const EVENT_LIMITS = {
  /** A request is tiny; anything larger is refused before parsing. */
  maxRequestBytes: 1024,
  maxRequestId: 32,
  /** Events in one history response, at most. */
  maxHistory: 1000,
  defaultHistory: 100,
  /** A response's or live message's size, at most: events past it are left for the next page. */
  maxMessageBytes: 64 * 1024,
  /** An event's detail as it travels, at most (characters). */
  maxDetail: 512,
} as const;

/** The detail shortened for the wire. */
export function wireEvent(e: EventDoc): EventDoc {
  return e.detail.length > EVENT_LIMITS.maxDetail ? { ...e, detail: `${e.detail.slice(0, EVENT_LIMITS.maxDetail - 1)}…` } : e;
}

/** Parses a history request; throws an Error naming what is wrong. */
export function decodeHistoryRequest(payload: Buffer): HistoryRequest {
  if (payload.length > EVENT_LIMITS.maxRequestBytes) throw new Error(`request of ${payload.length} bytes, above ${EVENT_LIMITS.maxRequestBytes}`);
  let v: unknown;
  try {
    v = JSON.parse(payload.toString('utf8'));
  } catch {
    throw new Error('request is not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('request is not a JSON object');
  const r = v as Record<string, unknown>;
  if (r.v !== 1) throw new Error(`request version ${JSON.stringify(r.v)} is not 1`);
  if (typeof r.id !== 'string' || r.id.length < 1 || r.id.length > EVENT_LIMITS.maxRequestId) throw new Error(`request id must be a string of 1..${EVENT_LIMITS.maxRequestId} characters`);
  if (r.device !== undefined && (typeof r.device !== 'string' || !isDeviceId(r.device))) throw new Error('request device is not a device id');
  if (r.limit !== undefined && !(Number.isInteger(r.limit) && (r.limit as number) >= 1)) throw new Error('request limit must be a positive integer');
  if (r.before !== undefined && !(Number.isInteger(r.before) && (r.before as number) >= 0)) throw new Error('request before must be a non-negative integer');
  return { v: 1, id: r.id, device: r.device as string | undefined, limit: r.limit as number | undefined, before: r.before as number | undefined };
}

/**
 * Fills a message with events (given newest first) until the size cap: returns the JSON and how
 * many events it holds. `wrap` builds the message around the chosen events (oldest first).
 */
export function packEvents(newestFirst: EventDoc[], wrap: (events: EventDoc[], more: boolean) => object): { json: string; count: number } {
  const events: EventDoc[] = [];
  let size = JSON.stringify(wrap([], true)).length;
  for (const e of newestFirst) {
    const w = wireEvent(e);
    const add = Buffer.byteLength(JSON.stringify(w)) + 1;
    if (size + add > EVENT_LIMITS.maxMessageBytes) break;
    size += add;
    events.push(w);
  }
  events.reverse();
  return { json: JSON.stringify(wrap(events, events.length < newestFirst.length)), count: events.length };
}

/** Parses a live or history message from an agent; undefined when it is not one. */
export function decodeEventsMessage(payload: Buffer): (LiveEvents & Partial<HistoryResponse>) | undefined {
  if (payload.length > EVENT_LIMITS.maxMessageBytes * 2) return undefined;
  try {
    const m = JSON.parse(payload.toString('utf8')) as LiveEvents & Partial<HistoryResponse>;
    if (m?.v !== 1 || typeof m.agent !== 'string' || !Array.isArray(m.events)) return undefined;
    m.events = m.events.filter((e) => e && typeof e.seq === 'number' && typeof e.at === 'number' && typeof e.kind === 'string');
    return m;
  } catch {
    return undefined;
  }
}
