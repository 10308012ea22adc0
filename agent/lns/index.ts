import type { Region } from '../../shared/lora/regions.js';
import { ChirpStackAdapter } from './chirpstack.js';
import { TtsAdapter } from './tts.js';
import type { LnsAdapter } from './types.js';

/** How to reach the network server (`ferry agent --lns …`). */
export interface LnsConfig {
  kind: 'chirpstack' | 'tts';
  brokerUrl: string;
  /** ChirpStack: the application id (UUID); TTS: `{application id}@{tenant id}`. */
  application: string;
  username?: string;
  password?: string;
  region: Region['name'];
}

export function createLnsAdapter(c: LnsConfig, log: (level: 'info' | 'warn' | 'error', msg: string) => void): LnsAdapter {
  const common = { brokerUrl: c.brokerUrl, username: c.username, password: c.password, log };
  return c.kind === 'chirpstack' ? new ChirpStackAdapter({ ...common, applicationId: c.application }) : new TtsAdapter({ ...common, application: c.application, region: c.region });
}
