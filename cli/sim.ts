import path from 'node:path';
import type { CommandModule } from 'yargs';
import { reasonName } from '../shared/errors.js';
import { isVersion } from '../shared/version.js';
import { HW_PATTERN } from '../shared/manifest.js';
import { Stage } from '../shared/messages.js';
import { Flash } from '../device/flash.js';
import { DEFAULT_SLOT_SIZE, makeLayout } from '../device/layout.js';
import { fleetIds } from '../device/fleet.js';
import { imageStateName, SimNode, type NodeOutcome } from '../device/node.js';
import { BOOT_PROFILES, type BootProfileName } from '../device/profiles.js';
import { simSweepCommand } from './sim-sweep.js';
import { IdentityStore } from '../broker/identity-store.js';
import { poolKdf } from '../broker/kdf.js';
import { provision } from '../broker/provision.js';
import { DEFAULT_DATA_DIR } from './broker.js';
import { brokerOption, jsonOption, prefixOption, untilSignal, usernameOption } from './common.js';
import { lockDataDir } from './data-dir-lock.js';
import { failureLine } from './failure.js';
import { readFileOrFail, readTrustKeys } from './key-files.js';
import { PASSWORD, passwordOptions, readSecret, secretFlagGiven } from './secrets.js';
import { brokerUrl } from './validate.js';
import { fitLine, terminalWidth } from './text-fit.js';

interface SimArgs {
  broker: string;
  devices: number;
  hw: string;
  version: string;
  trust: string | string[];
  'fail-selftest': number;
  battery?: string;
  'fail-mode': 'report' | 'watchdog';
  'id-prefix': string;
  'max-message': number;
  window: number;
  rollback: boolean;
  boot?: BootProfileName;
  'slot-size': number;
  'state-dir'?: string;
  prefix: string;
  username?: string;
  password?: string;
  'password-file'?: string;
  credentials?: string;
  provision: boolean;
  'data-dir': string;
  json: boolean;
}

/**
 * Reads per-device MQTT credentials: either a JSON object {"node-1": "secret", …} or JSON lines as
 * `ferry devices add --json` prints them ({"username": "node-1", "password": "…"}).
 */
export function readCredentials(file: string): Map<string, string> {
  const text = readFileOrFail(file, '--credentials').toString('utf8').trim();
  const out = new Map<string, string>();
  const add = (v: unknown) => {
    if (v && typeof v === 'object' && 'username' in v && 'password' in v) out.set(String((v as { username: unknown }).username), String((v as { password: unknown }).password));
  };
  try {
    const whole = JSON.parse(text) as unknown;
    if (Array.isArray(whole)) whole.forEach(add);
    else if (whole && typeof whole === 'object' && !('username' in whole)) for (const [k, v] of Object.entries(whole)) out.set(k, String(v));
    else add(whole);
    return out;
  } catch {
    for (const [i, line] of text.split('\n').entries()) {
      if (!line.trim()) continue;
      try {
        add(JSON.parse(line));
      } catch {
        throw new Error(`--credentials ${file}: line ${i + 1} is not JSON`);
      }
    }
    return out;
  }
}

/** The first problem with the flags, naming the flag, or undefined. */
export function checkSimArgs(a: SimArgs): string | undefined {
  if (!Number.isInteger(a.devices) || a.devices < 1 || a.devices > 1000) return `--devices must be an integer 1..1000, got ${a.devices}`;
  if (!Number.isInteger(a['fail-selftest']) || a['fail-selftest'] < 0 || a['fail-selftest'] > a.devices) return `--fail-selftest must be 0..${a.devices} (--devices), got ${a['fail-selftest']}`;
  if (a.battery !== undefined && batteryOf(a.battery, 0, 1) === undefined) return `--battery "${a.battery}" must be a percentage 0..100, or a range LO-HI spread over the nodes`;
  if (!HW_PATTERN.test(a.hw)) return `--hw "${a.hw}" must be 1-32 of A-Z a-z 0-9 _ . -`;
  if (!isVersion(a.version)) return `--version "${a.version}" is not a version like 1.2.3`;
  if (!Number.isInteger(a['max-message']) || a['max-message'] < 128 || a['max-message'] > 1024 * 1024) return `--max-message must be 128..1048576, got ${a['max-message']}`;
  if (!Number.isInteger(a.window) || a.window < 1 || a.window > 1024) return `--window must be 1..1024, got ${a.window}`;
  if (!Number.isInteger(a['slot-size']) || a['slot-size'] <= 0 || a['slot-size'] % 65536 !== 0) return `--slot-size must be a positive multiple of 65536, got ${a['slot-size']}`;
  if (!/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,40}$/.test(a['id-prefix'])) return `--id-prefix "${a['id-prefix']}" must be letters, digits, _ . : - (up to 41)`;
  const passwordGiven = secretFlagGiven(a as never, PASSWORD);
  if (a.credentials && (a.username || passwordGiven)) return '--credentials and --username/--password are exclusive';
  if (a.boot && !a.rollback && a.boot !== 'esp-idf-norollback') return `--no-rollback contradicts --boot ${a.boot}`;
  if (a.provision && (a.credentials || a.username || passwordGiven)) return '--provision makes its own credentials: drop --credentials/--username/--password';
  return undefined;
}

/**
 * Bad flags exit 2 like yargs' own complaints. (cli/main.ts's fail handler rethrows whatever yargs
 * passes as err, and for a check() message that is the message itself, which would exit 1.)
 */
function flagError(msg: string): never {
  process.stderr.write(`${failureLine(msg)}\n(run ferry --help for usage)\n`);
  process.exit(2);
}

/** Node identities for the simulated ids, written where `ferry devices add` writes them. */
async function provisionNodes(dataDir: string, ids: string[]): Promise<Map<string, string>> {
  // Hundreds of hashes at once: side by side on the thread pool (broker/kdf.ts).
  const store = IdentityStore.open(dataDir, { kdf: poolKdf });
  try {
    const creds = await provision(store, 'node', ids);
    process.stderr.write(`ferry sim: provisioned ${ids.length} node identities in ${store.file}\n`);
    return new Map([...creds].map(([id, c]) => [id, c.password]));
  } finally {
    store.close();
  }
}

const STAGE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Stage).map(([k, v]) => [v, k]));

/** `ferry sim`: N simulated ESP32-like nodes on a broker, until SIGINT/SIGTERM. */
const simRunCommand: CommandModule<object, SimArgs> = {
  command: '$0',
  describe: 'run simulated ESP32-like nodes (flash, A/B slots, rollback bootloader) against a broker',
  builder: (y) =>
    y
      .options({
        broker: brokerOption,
        devices: { type: 'number', default: 1, describe: 'how many nodes' },
        hw: { type: 'string', demandOption: true, describe: 'hardware class of the nodes' },
        version: { type: 'string', demandOption: true, describe: 'factory firmware version the nodes start on' },
        trust: { type: 'string', demandOption: true, describe: 'operator public key file(s) (PEM) the nodes trust' },
        'fail-selftest': { type: 'number', default: 0, describe: 'how many nodes (the last ones) fail the self-test of a new image' },
        battery: { type: 'string', describe: 'battery percent each node reports in its Hello (P, or LO-HI spread over the nodes); absent: mains powered' },
        'fail-mode': { choices: ['report', 'watchdog'] as const, default: 'report' as const, describe: 'how failing nodes fail: report it, or hang until the watchdog resets them' },
        'id-prefix': { type: 'string', default: 'node', describe: 'device ids are <prefix>-1 … <prefix>-N' },
        'max-message': { type: 'number', default: 4096, describe: 'largest MQTT PUBLISH a node can receive, bytes' },
        window: { type: 'number', default: 16, describe: 'receive window in chunks' },
        rollback: { type: 'boolean', default: true, describe: 'bootloader rollback (--no-rollback: a bootloader without it)' },
        boot: { choices: BOOT_PROFILES, describe: 'boot profile (default esp-idf; esp-idf-norollback with --no-rollback)' },
        'slot-size': { type: 'number', default: DEFAULT_SLOT_SIZE, describe: 'size of each OTA slot in bytes (multiple of 65536)' },
        'state-dir': { type: 'string', describe: 'keep each node\'s flash in a file here, so nodes survive a restart (one sim at a time: locked)' },
        prefix: prefixOption,
        username: usernameOption,
        ...passwordOptions,
        credentials: { type: 'string', describe: 'per-device passwords: JSON {"id": "password"} or `ferry devices add --json` lines' },
        provision: {
          type: 'boolean',
          default: false,
          describe: 'provision the node identities in the broker\'s identity store (--data-dir) and connect with them; existing nodes of the same ids get new secrets',
        },
        'data-dir': { type: 'string', default: DEFAULT_DATA_DIR, describe: 'with --provision: the data dir of `ferry broker`/`ferry gateway` (its identities.sqlite)' },
        json: jsonOption,
      })
      .check((argv) => {
        const problem = checkSimArgs(argv as unknown as SimArgs);
        if (problem) flagError(problem);
        return true;
      }) as never,
  handler: async (argv) => {
    const url = brokerUrl(argv.broker);
    const secret = readSecret(argv as never, PASSWORD, argv.username);
    const trust = readTrustKeys(argv.trust);
    const ids = fleetIds(argv.devices, argv['id-prefix']);
    const creds = argv.credentials ? readCredentials(argv.credentials) : argv.provision ? await provisionNodes(argv['data-dir'], ids) : undefined;
    const failing = new Set(ids.slice(ids.length - argv['fail-selftest']));
    if (argv['fail-selftest'] === 0) failing.clear();
    const layout = makeLayout(argv['slot-size']);
    const lock = argv['state-dir'] ? lockDataDir(argv['state-dir'], 'sim', 'sim') : undefined;

    const t0 = Date.now();
    const emit = (id: string, event: string, detail: Record<string, unknown> & { text: string }) => {
      if (argv.json) {
        const { text: _text, ...rest } = detail;
        process.stdout.write(`${JSON.stringify({ at: new Date().toISOString(), id, event, ...rest })}\n`);
      } else {
        // On a terminal each event stays on one line (cut to its width), so the progress reads as a column.
        process.stdout.write(`${fitLine(`${((Date.now() - t0) / 1000).toFixed(1).padStart(7)}s ${id.padEnd(12)} ${event.padEnd(11)} ${detail.text}`, terminalWidth(process.stdout))}\n`);
      }
    };

    const nodes = ids.map((id) => {
      if (creds && !creds.has(id)) throw new Error(`--credentials ${argv.credentials}: no password for ${id}`);
      const flash = argv['state-dir'] ? new Flash(layout.flashSize, { file: path.join(argv['state-dir'], `${id}.flash`) }) : undefined;
      const node = new SimNode({
        brokerUrl: url,
        deviceId: id,
        hw: argv.hw,
        version: argv.version,
        trust,
        prefix: argv.prefix,
        username: creds ? id : argv.username,
        password: creds ? creds.get(id) : secret,
        maxMessage: argv['max-message'],
        window: argv.window,
        boot: argv.boot,
        rollback: argv.boot ? undefined : argv.rollback,
        slotSize: argv['slot-size'],
        failSelfTest: failing.has(id) ? (argv['fail-mode'] === 'watchdog' ? 'watchdog' : true) : false,
        battery: argv.battery === undefined ? undefined : batteryOf(argv.battery, ids.indexOf(id), ids.length),
        flash,
        log: (level, msg) => {
          const text = msg.startsWith(`${id}: `) ? msg.slice(id.length + 2) : msg;
          if (level !== 'info') emit(id, level, { text, msg: text });
        },
      });
      // Progress: stage changes, and download progress in 10% steps.
      let lastTenth = -1;
      node.on('stage', (name: string, detail: string) => {
        if (name === 'downloading' || name === 'resumed') lastTenth = -1;
        if (name === 'confirmed' || name === 'rolledBack') return; // the outcome line says it
        emit(id, name, { text: detail, detail });
      });
      node.on('chunk', (received: number, total: number) => {
        const tenth = Math.floor((10 * received) / total);
        if (tenth === lastTenth) return;
        lastTenth = tenth;
        emit(id, 'progress', { text: `${received}/${total} chunks (${tenth * 10}%)`, received, total });
      });
      node.on('outcome', (o: NodeOutcome) => {
        const stage = STAGE_NAMES[o.stage] ?? String(o.stage);
        emit(id, 'outcome', {
          text: `${stage}${o.reason ? ` (${reasonName(o.reason)})` : ''}${o.version ? ` ${o.version}` : ''}; running ${node.runningVersion} slot ${node.slot} ${imageStateName(node.imageState)}`,
          stage, reason: reasonName(o.reason), version: o.version, running: node.runningVersion,
        });
      });
      return node;
    });
    await Promise.all(nodes.map((n) => n.start()));
    emit('sim', 'started', { text: `${nodes.length} ${argv.hw} nodes on ${url}${failing.size ? `, failing self-test: ${[...failing].join(', ')}` : ''}`, devices: nodes.length });
    await untilSignal();
    await Promise.all(nodes.map((n) => n.stop()));
    const wear = nodes.reduce((w, n) => ({ erases: w.erases + n.flash.stats.erases, writes: w.writes + n.flash.stats.writes }), { erases: 0, writes: 0 });
    emit('sim', 'stopped', { text: `flash erases ${wear.erases}, writes ${wear.writes} across ${nodes.length} nodes`, ...wear });
    lock?.release();
  },
};

/** `ferry sim` runs the nodes (its default subcommand); `ferry sim sweep` runs the power-cut sweep (cli/sim-sweep.ts). */
export const simCommand: CommandModule = {
  command: 'sim',
  describe: 'run simulated ESP32-like nodes against a broker; `ferry sim sweep`: power-cut sweep of an update',
  builder: (y) => y.command(simSweepCommand as CommandModule).command(simRunCommand as CommandModule),
  handler: () => {},
};

/** `--battery P` or `LO-HI` (node i of n gets LO + (HI-LO)·i/(n-1), rounded); undefined when malformed. */
export function batteryOf(text: string, i: number, n: number): number | undefined {
  const m = /^(\d{1,3})(?:-(\d{1,3}))?$/.exec(text);
  if (!m) return undefined;
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  if (lo > 100 || hi > 100) return undefined;
  return n <= 1 ? lo : Math.round(lo + ((hi - lo) * i) / (n - 1));
}
