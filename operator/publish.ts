import type { KeyObject } from 'node:crypto';
import mqtt from 'mqtt';
import { sha256, signManifest, type Manifest } from '../shared/manifest.js';
import { topics as makeTopics } from '../shared/topics.js';

export interface PublishOptions {
  brokerUrl: string;
  image: Buffer;
  hw: string;
  version: string;
  key: KeyObject;
  securityVersion?: number;
  flags?: number;
  prefix?: string;
  username?: string;
  password?: string;
  /** Bytes per retained image part; 64 KiB keeps each part under common broker limits. */
  partSize?: number;
  onProgress?: (sent: number, total: number) => void;
}

export interface PublishResult {
  manifest: Manifest;
  manifestBytes: Buffer;
  parts: number;
}

export const DEFAULT_PART_SIZE = 64 * 1024;

/**
 * Signs a release and publishes it as retained messages: image parts first, then the manifest, so
 * any agent that sees the manifest can fetch every part. Each part is QoS 1 and awaited in a small
 * pipeline, so the progress shown is what the broker has acknowledged.
 */
export async function publishRelease(opts: PublishOptions): Promise<PublishResult> {
  const manifest: Manifest = {
    hw: opts.hw,
    version: opts.version,
    securityVersion: opts.securityVersion ?? 0,
    size: opts.image.length,
    digest: sha256(opts.image),
    created: Math.floor(Date.now() / 1000),
    flags: opts.flags ?? 0,
  };
  const manifestBytes = signManifest(manifest, opts.key);
  const t = makeTopics(opts.prefix);
  const partSize = opts.partSize ?? DEFAULT_PART_SIZE;
  const parts = Math.ceil(opts.image.length / partSize);
  const client = await mqtt.connectAsync(opts.brokerUrl, {
    protocolVersion: 4,
    username: opts.username,
    password: opts.password,
    reconnectPeriod: 0,
    connectTimeout: 10_000,
  });
  try {
    let acked = 0;
    const inFlight = new Set<Promise<unknown>>();
    for (let i = 0; i < parts; i++) {
      const data = opts.image.subarray(i * partSize, Math.min(opts.image.length, (i + 1) * partSize));
      const p: Promise<unknown> = client.publishAsync(t.releasePart(opts.hw, opts.version, i), data, { qos: 1, retain: true }).then(() => {
        inFlight.delete(p);
        acked += data.length;
        opts.onProgress?.(acked, opts.image.length);
      });
      inFlight.add(p);
      if (inFlight.size >= 8) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    await client.publishAsync(t.releaseManifest(opts.hw, opts.version), manifestBytes, { qos: 1, retain: true });
  } finally {
    await client.endAsync();
  }
  return { manifest, manifestBytes, parts };
}
