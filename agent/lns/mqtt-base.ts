import { EventEmitter } from 'node:events';
import mqtt, { type MqttClient } from 'mqtt';
import { BadLnsMessage, rateLimited } from './json.js';
import type { LnsEvents } from './types.js';

export interface LnsLinkOptions {
  brokerUrl: string;
  username?: string;
  password?: string;
  clientId?: string;
  log?: (level: 'info' | 'warn' | 'error', msg: string) => void;
  /** How long start() waits for the first CONNACK. */
  connectTimeoutMs?: number;
}

/**
 * The MQTT side every LNS adapter shares: one client, its subscriptions re-made on every (re)connect, inbound
 * messages handed to `onMessage` with every failure turned into a rate-limited one-line warning.
 */
export abstract class LnsMqttLink extends EventEmitter<LnsEvents> {
  protected client: MqttClient | undefined;
  private readonly warnOnce = rateLimited(1000);
  private stopped = false;

  constructor(protected readonly o: LnsLinkOptions) {
    super();
  }

  protected abstract filters(): string[];
  /** Handles one inbound message; may throw BadLnsMessage. */
  protected abstract onMessage(topic: string, payload: Buffer): void;
  protected abstract describe(): string;

  protected log(level: 'info' | 'warn' | 'error', msg: string): void {
    this.o.log?.(level, msg);
  }

  protected warn(key: string, msg: string): void {
    if (this.warnOnce(key)) this.log('warn', msg);
  }

  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      const client = mqtt.connect(this.o.brokerUrl, {
        protocolVersion: 4, username: this.o.username, password: this.o.password, clientId: this.o.clientId,
        reconnectPeriod: 2000, connectTimeout: this.o.connectTimeoutMs ?? 10_000, clean: true,
      });
      this.client = client;
      let first = true;
      const timer = setTimeout(() => fail(new Error(`${this.describe()}: no connection to ${this.o.brokerUrl} within ${(this.o.connectTimeoutMs ?? 10_000) / 1000} s`)), this.o.connectTimeoutMs ?? 10_000);
      const fail = (err: Error) => {
        if (!first) return;
        first = false;
        clearTimeout(timer);
        client.end(true);
        reject(new Error(`${this.describe()}: ${err.message}`));
      };
      client.on('error', (err) => (first ? fail(err) : this.warn('link-error', `${this.describe()}: ${err.message}`)));
      client.on('connect', () => {
        client.subscribe(this.filters(), { qos: 0 }, (err) => {
          if (err) return first ? fail(err) : this.warn('subscribe', `${this.describe()}: subscribe failed: ${err.message}`);
          this.emit('link', true);
          if (first) {
            first = false;
            clearTimeout(timer);
            this.log('info', `${this.describe()}: connected to ${this.o.brokerUrl}`);
            resolve();
          }
        });
      });
      client.on('close', () => {
        if (!first && !this.stopped) this.emit('link', false);
      });
      client.on('message', (topic, payload) => {
        try {
          this.onMessage(topic, payload);
        } catch (err) {
          const msg = err instanceof BadLnsMessage ? err.message : `handling ${topic}: ${(err as Error).message}`;
          this.warn(topic.split('/').slice(-2).join('/'), `${this.describe()}: ignored message on ${topic.slice(0, 120)}: ${msg}`);
        }
      });
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const c = this.client;
    // Without a link a graceful end waits for a broker that is gone: force it then.
    if (c) await new Promise<void>((r) => c.end(!c.connected, {}, () => r()));
  }

  protected publish(topic: string, body: unknown): Promise<void> {
    const c = this.client;
    if (!c || !c.connected) return Promise.reject(new Error(`${this.describe()}: not connected to the LNS broker`));
    return new Promise((resolve, reject) => c.publish(topic, JSON.stringify(body), { qos: 0 }, (err) => (err ? reject(err) : resolve())));
  }
}
