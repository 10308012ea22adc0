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
      if (stopped || client.disconnecting || client.connected) return;
      client.reconnect({ incomingStore: client.incomingStore, outgoingStore: client.outgoingStore });
    }, delay);
  };
  client.on('connect', onConnect);
  client.on('close', onClose);
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    client.off('connect', onConnect);
    client.off('close', onClose);
  };
}
