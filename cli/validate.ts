import { UsageError } from './common.js';

/**
 * Checks on flag values that every command shares, so a broker URL or a port means the same thing
 * and is refused with the same words wherever it is given.
 */

const BROKER_SCHEMES = new Set(['mqtt:', 'mqtts:', 'tcp:', 'ssl:', 'tls:', 'ws:', 'wss:']);

/**
 * A broker URL as MQTT.js takes it. `host:port` and a bare `host` (the way mosquitto_pub takes
 * them) mean mqtt://host:port and mqtt://host:1883; without this MQTT.js reads "127.0.0.1" as the
 * scheme and fails much later with "Invalid header flag bits".
 */
export function brokerUrl(value: string, flag = '--broker'): string {
  const given = value.trim();
  const bare = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:\d+)?$/.exec(given);
  const text = bare ? `mqtt://${bare[1]}${bare[2] ?? ':1883'}` : given;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new UsageError(`${flag} "${value}" is not a broker URL like mqtt://127.0.0.1:1883 or 127.0.0.1:1883`);
  }
  if (!BROKER_SCHEMES.has(url.protocol)) {
    throw new UsageError(`${flag} "${value}": scheme ${url.protocol.slice(0, -1)} is not one of mqtt, mqtts, ws, wss (e.g. mqtt://127.0.0.1:1883)`);
  }
  if (!url.hostname) throw new UsageError(`${flag} "${value}" names no host (e.g. mqtt://127.0.0.1:1883)`);
  if (url.port !== '' && Number(url.port) === 0) throw new UsageError(`${flag} "${value}": port must be 1..65535`);
  return text;
}

/** A broker URL flag that may be absent. */
export function optionalBrokerUrl(value: string | undefined, flag: string): string | undefined {
  return value === undefined ? undefined : brokerUrl(value, flag);
}

/** A TCP port to listen on (0: any free port). */
export function listenPort(value: number | undefined, flag: string): void {
  if (value !== undefined && (!Number.isInteger(value) || value < 0 || value > 65535)) throw new UsageError(`--${flag} must be 0..65535, got ${value}`);
}
