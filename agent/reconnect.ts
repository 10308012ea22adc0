import type { MqttClient } from 'mqtt';
import { jittered } from './rtt.js';

/**
 * Reconnecting to the broker with exponential backoff and jitter. MQTT.js retries at a fixed period,
 * so after a broker restart every gateway on a site would hammer it in lockstep; here each lost
 * connection waits initial·2^k ms (capped), scaled by a random factor in [0.5, 1].
 */
export interface ReconnectConfig {
  initialMs: number;
  maxMs: number;
}

export const DEFAULT_RECONNECT: ReconnectConfig = { initialMs: 500, maxMs: 30_000 };

export class Backoff {
  private attempt = 0;

  constructor(
    private readonly cfg: ReconnectConfig = DEFAULT_RECONNECT,
    private readonly random: () => number = Math.random,
  ) {}

  /** Delay before the next attempt; each call doubles the ceiling until maxMs. */
  next(): number {
    const ceiling = Math.min(this.cfg.maxMs, this.cfg.initialMs * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    return jittered(ceiling, this.random);
  }

  get attempts(): number {
    return this.attempt;
  }

  reset(): void {
    this.attempt = 0;
  }
}

/**
 * Drives reconnects of a client created with `reconnectPeriod: 0`. Returns a function that stops it.
 * The client's message stores are kept across reconnects, so QoS 1 publishes still awaiting their
 * PUBACK are resent and their callbacks fire (the agent counts them to bound its backlog).
 *
 * A client that was ended (`end()`, by its owner or by anyone else) is never reconnected: end()
 * closes those stores, and MQTT.js (with reconnectPeriod 0) clears `disconnecting` once it has,
 * so a reconnect scheduled before the end would revive the client on closed stores and crash the
 * process at the next CONNACK (`Cannot read properties of null (reading 'forEach')` in its store).
 */
export function keepReconnecting(client: MqttClient, backoff: Backoff, onSchedule?: (delayMs: number, attempt: number) => void): () => void {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const onConnect = () => backoff.reset();
  const onClose = () => {
    if (stopped || timer || client.disconnecting) return;
    const delay = backoff.next();
    onSchedule?.(delay, backoff.attempts);
    timer = setTimeout(() => {
      timer = undefined;
      if (stopped || client.disconnecting || client.disconnected || client.connected) return;
      client.reconnect({ incomingStore: client.incomingStore, outgoingStore: client.outgoingStore });
    }, delay);
  };
  const stop = () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    timer = undefined;
    client.off('connect', onConnect);
    client.off('close', onClose);
    client.off('end', stop);
  };
  client.on('connect', onConnect);
  client.on('close', onClose);
  client.on('end', stop);
  return stop;
}

/**
 * CONNACK codes that no retry will change: a wrong protocol version, a refused client id, bad
 * credentials, not authorised (MQTT 3.1.1 return codes 1, 2, 4, 5 and their MQTT 5 reason codes).
 * "Server unavailable" (3) and every network error are worth retrying, TLS certificate errors
 * included: a Pi without a real-time clock has no true time until NTP answers, and until then a
 * valid certificate looks "not yet valid".
 */
const PERMANENT_REFUSALS: ReadonlySet<number> = new Set([1, 2, 4, 5, 0x84, 0x85, 0x86, 0x87, 0x8a, 0x8c]);

export function isPermanentRefusal(err: Error): boolean {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'number' && PERMANENT_REFUSALS.has(code);
}

/**
 * Resolves at the client's first connection. A broker that is not up yet (connection refused, no
 * route, DNS not ready: the boot order of a gateway whose WAN comes late) is not a failure: the
 * reconnect loop keeps trying and `onWaiting` is told once. Only a broker that answers and refuses
 * (isPermanentRefusal) rejects. The client is left as it is either way: its owner ends it.
 */
export function untilConnected(client: MqttClient, onWaiting?: (err: Error) => void): Promise<void> {
  if (client.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    let told = false;
    const onError = (err: Error) => {
      if (isPermanentRefusal(err)) {
        done();
        reject(new Error(`the broker at ${urlOf(client)} refused the connection: ${err.message.replace(/^Connection refused: /, '')}`));
      } else if (!told) {
        told = true;
        onWaiting?.(err);
      }
    };
    const onConnect = () => {
      done();
      resolve();
    };
    const done = () => {
      client.off('connect', onConnect);
      client.off('error', onError);
    };
    client.on('connect', onConnect);
    client.on('error', onError);
  });
}

function urlOf(client: MqttClient): string {
  const o = client.options;
  return `${o.protocol ?? 'mqtt'}://${o.hostname ?? o.host ?? '?'}:${o.port ?? '?'}`;
}
