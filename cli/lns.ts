import type { AgentOptions } from '../agent/config.js';
import { UsageError } from './common.js';
import { readSecret, secretOptions, type SecretSource } from './secrets.js';
import { brokerUrl } from './validate.js';

/** `ferry agent --lns chirpstack|tts …`: LoRa nodes behind a network server's MQTT integration (docs/lora.md §7). */
export const LNS_PASSWORD: SecretSource = { flag: 'lns-password', env: 'FERRY_LNS_PASSWORD' };

export const lnsOptions = {
  lns: { type: 'string', choices: ['chirpstack', 'tts'], describe: 'also serve LoRa nodes through this network server\'s MQTT integration' },
  'lns-broker': { type: 'string', describe: 'the network server\'s MQTT broker URL (with --lns)' },
  application: { type: 'string', describe: 'ChirpStack application id (UUID), or TTS {application}@{tenant} (with --lns)' },
  'lns-username': { type: 'string', describe: 'username on the LNS broker (TTS: defaults to the application)' },
  ...secretOptions(LNS_PASSWORD, 'password on the LNS broker (TTS: an API key)'),
  region: { type: 'string', choices: ['EU868', 'US915'], default: 'EU868', describe: 'LoRaWAN region: data rates, payload limits, duty cycle' },
  'lora-block': { type: 'number', describe: 'KiB of image per LoRa fragmentation session (1..255; default: up to 1,024 fragments at the node\'s data rate)' },
} as const;

export interface LnsArgs {
  lns?: string;
  'lns-broker'?: string;
  application?: string;
  'lns-username'?: string;
  'lns-password'?: string;
  'lns-password-file'?: string;
  region?: string;
  'lora-block'?: number;
}

export function planLns(argv: LnsArgs): AgentOptions['lora'] {
  if (argv.lns === undefined) {
    for (const f of ['lns-broker', 'application', 'lns-username', 'lns-password', 'lns-password-file'] as const) {
      if (argv[f] !== undefined) throw new UsageError(`--${f} only makes sense with --lns chirpstack|tts`);
    }
    return undefined;
  }
  if (argv.lns !== 'chirpstack' && argv.lns !== 'tts') throw new UsageError(`--lns must be chirpstack or tts, got ${argv.lns}`);
  if (!argv['lns-broker']) throw new UsageError('--lns needs --lns-broker URL (the network server\'s MQTT broker)');
  if (!argv.application) throw new UsageError(`--lns needs --application (${argv.lns === 'tts' ? '{application}@{tenant}' : 'the ChirpStack application id'})`);
  const region = argv.region ?? 'EU868';
  if (region !== 'EU868' && region !== 'US915') throw new UsageError(`--region must be EU868 or US915, got ${region}`);
  const block = argv['lora-block'] ?? 'auto';
  if (block !== 'auto' && (!Number.isInteger(block) || block < 1 || block > 255)) throw new UsageError(`--lora-block must be an integer 1..255 (KiB), got ${block}`);
  const username = argv['lns-username'] ?? (argv.lns === 'tts' ? (argv.application.includes('@') ? argv.application : `${argv.application}@ttn`) : undefined);
  return {
    lns: {
      kind: argv.lns, brokerUrl: brokerUrl(argv['lns-broker'], '--lns-broker'), application: argv.application, region,
      username, password: readSecret(argv as Record<string, unknown>, LNS_PASSWORD, username),
    },
    options: { region, blockKiB: block },
  };
}
