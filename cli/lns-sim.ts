import type { CommandModule } from 'yargs';
import { LnsSim } from '../device/lora/lns-sim.js';
import { parseLossModel } from '../device/lora/radio.js';
import { BOOT_PROFILES, type BootProfileName } from '../device/profiles.js';
import { HW_PATTERN } from '../shared/manifest.js';
import { isVersion } from '../shared/version.js';
import { untilSignal } from './common.js';
import { exitWithFailure } from './failure.js';
import { readTrustKeys } from './key-files.js';
import { brokerUrl } from './validate.js';

/**
 * `ferry lns-sim`: a simulated LoRaWAN network server with N LoRa nodes, speaking ChirpStack v4's MQTT integration
 * on a real broker (docs/lora.md §8). Point `ferry agent --lns chirpstack --lns-broker URL --application ID` at the
 * same broker.
 */
interface LnsSimArgs {
  broker: string;
  application: string;
  nodes: number;
  hw: string;
  version: string;
  trust: string | string[];
  boot: BootProfileName;
  loss: string;
  'up-loss': string;
  dr: number;
  'ram-budget': number;
  seed: number;
  'time-warp': number;
  jump: boolean;
  'fail-selftest': number;
  username?: string;
  password?: string;
  json: boolean;
}

export const lnsSimCommand: CommandModule<object, LnsSimArgs> = {
  command: 'lns-sim',
  describe: 'Simulate a ChirpStack v4 network server (MQTT integration) and N LoRa nodes: loss, DR limits, duty cycle, airtime',
  builder: (y) =>
    y
      .option('broker', { type: 'string', default: 'mqtt://127.0.0.1:1883', describe: 'MQTT broker the LNS integration publishes on' })
      .option('application', { type: 'string', default: 'ferry', describe: 'ChirpStack application id in the topics (a UUID in ChirpStack)' })
      .option('nodes', { type: 'number', default: 1, describe: 'simulated LoRa nodes (devEui 70b3d57ed0000000, …01, …)' })
      .option('hw', { type: 'string', default: 'lora-dev', describe: 'hardware class of the nodes' })
      .option('version', { type: 'string', default: '1.0.0', describe: 'factory firmware version' })
      .option('trust', { type: 'string', demandOption: true, describe: 'operator public key file(s) the nodes trust (repeatable)' })
      .option('boot', { choices: BOOT_PROFILES, default: 'esp-idf' as BootProfileName, describe: 'boot profile of the node model' })
      .option('loss', { type: 'string', default: '0%', describe: 'downlink loss per node link: P% (i.i.d.) or P%,burst=B (Gilbert–Elliott, mean burst B frames)' })
      .option('up-loss', { type: 'string', default: '0%', describe: 'uplink loss, same syntax' })
      .option('dr', { type: 'number', default: 5, describe: 'EU868 uplink data rate of the nodes (0..6)' })
      .option('ram-budget', { type: 'number', default: 8192, describe: 'decoder RAM per node in bytes (TS004 spec layout); larger sessions are refused' })
      .option('seed', { type: 'number', default: 13, describe: 'seed of the loss draws' })
      .option('time-warp', { type: 'number', default: 1, describe: 'virtual seconds per real second (airtime, duty cycle, RX windows, Class C sessions are virtual)' })
      .option('jump', { type: 'boolean', default: false, describe: 'also leap to the next radio event when nothing arrived for 40 ms (for agents that answer quickly)' })
      .option('fail-selftest', { type: 'number', default: 0, describe: 'this many nodes (the last ones) fail the self-test of a new image' })
      .option('username', { type: 'string', describe: 'broker username' })
      .option('password', { type: 'string', describe: 'broker password (prefer FERRY_PASSWORD)' })
      .option('json', { type: 'boolean', default: false, describe: 'log lines as JSON' }),
  handler: async (a) => {
    let sim: LnsSim;
    try {
      if (!Number.isInteger(a.nodes) || a.nodes < 1 || a.nodes > 10_000) throw new Error(`--nodes ${a.nodes} is not 1..10000`);
      if (!HW_PATTERN.test(a.hw)) throw new Error(`--hw "${a.hw}" is not a hardware class`);
      if (!isVersion(a.version) || a.version.length > 10) throw new Error(`--version "${a.version}" is not a version of at most 10 characters`);
      if (![0, 1, 2, 3, 4, 5, 6].includes(a.dr)) throw new Error(`--dr ${a.dr} is not an EU868 LoRa data rate 0..6`);
      if (!(a['time-warp'] > 0 && a['time-warp'] <= 1e6)) throw new Error(`--time-warp ${a['time-warp']} is not in (0, 1000000]`);
      if (!/^[A-Za-z0-9_.-]{1,64}$/.test(a.application)) throw new Error(`--application "${a.application}" must be 1..64 of A-Z a-z 0-9 _ . -`);
      const failing = new Set(Array.from({ length: Math.min(a.nodes, Math.max(0, a['fail-selftest'])) }, (_, i) => a.nodes - 1 - i));
      sim = new LnsSim({
        brokerUrl: brokerUrl(a.broker), username: a.username, password: a.password ?? process.env.FERRY_PASSWORD, appId: a.application, nodes: a.nodes,
        hw: a.hw, version: a.version, trust: readTrustKeys(a.trust), profile: a.boot, ramBudget: a['ram-budget'], dr: a.dr,
        downLoss: parseLossModel(a.loss), upLoss: parseLossModel(a['up-loss']), seed: a.seed, failSelfTest: failing,
        clock: { warp: a['time-warp'], jump: a.jump, settleMs: 40 },
        log: (level, msg) => (a.json ? process.stdout.write(`${JSON.stringify({ at: new Date().toISOString(), level, msg })}\n`) : process.stderr.write(`${level.padEnd(5)} ${msg}\n`)),
      });
    } catch (e) {
      exitWithFailure((e as Error).message, 2);
    }
    try {
      await sim.start();
    } catch (e) {
      exitWithFailure(`cannot reach the broker: ${(e as Error).message}`);
    }
    process.stderr.write(`lns-sim: ${a.nodes} node(s) on application/${a.application}/device/+/…, EU868 DR${a.dr}, loss ${a.loss}, time warp ${a['time-warp']}×${a.jump ? ' + jumps' : ''}\n`);
    await untilSignal();
    const s = sim.stats();
    process.stderr.write(`lns-sim: ${s.virtualS.toFixed(0)} s virtual in ${s.realS.toFixed(1)} s real (${s.speedup.toFixed(0)}×); airtime ${(s.airtimeS.unicast + s.airtimeS.multicast).toFixed(1)} s; ${s.refused} commands refused, ${s.oversize} oversize\n`);
    await sim.stop();
  },
};
