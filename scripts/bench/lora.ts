import { benchArg, median } from './bench-args.js';
import { runCampaign, type CampaignResult, type Downlink } from '../../harness/lora/campaign.js';
import { decodeRequests, TS004_PORT } from '../../shared/lora/ts004.js';
import { parseLossModel } from '../../device/lora/radio.js';
import { EU868, maxFragmentSize } from '../../shared/lora/regions.js';
import { BENCH_DR, benchImage, drawnLoss, imageAirtimeMs } from './lora-common.js';

/**
 * scripts/bench/lora: a 100 KiB image to 1 and to 50 simulated LoRa nodes at 0 %, 10 % and 30 % downlink loss,
 * through `ferry lns-sim` (ChirpStack v4 MQTT topics on a real aedes broker) and the real agent (`ferry agent
 * --lns chirpstack`'s `Agent`, sharing the simulator's virtual clock; harness/lora/campaign.ts). EU868 DR5 (239 B fragments), multicast Class C on 869.525 MHz (10 % duty cycle), nodes on the node model's
 * esp-idf boot profile verifying the signed manifest and the image digest themselves.
 *
 * Prints per row: the loss asked for and the one the radio drew (every downlink frame to every node),
 * gateway downlink airtime (s, all frames: control, TS005, TS004 setup/status, fragments),
 * airtime / image airtime (the image's M = ⌈size/239⌉ data fragments with no loss and no protocol), airtime /
 * the same fleet's 0 % row, virtual time to the last confirmed boot, confirmed nodes, real seconds and the
 * virtual/real speed-up. ×floor divides by the least airtime that loss allows, the image's over (1 − the loss drawn):
 * a seed's ×image follows the loss it happened to draw (±3 % between seeds at 10 %), ×floor shows what the protocol
 * adds. 1-node rows are the median (and mean) of --trials seeds, fleet rows of --fleet-trials; `confirmed` counts over all of them. `--json` for machine output.
 *
 *   node dist/scripts/bench/lora.js [--size 102400] [--fleet 50] [--only 1,50] [--trials 9] [--fleet-trials 1] [--loss 0,10,30] [--burst 0] [--json]
 */
const args = process.argv.slice(2);
const size = Number(benchArg(args, 'size', '102400'));
const fleet = Number(benchArg(args, 'fleet', '50'));
/** Which fleet sizes to run (1 and --fleet by default); lets the rows run in separate processes. */
const sizes = benchArg(args, 'only', `1,${fleet}`).split(',').map(Number);
const trials = Number(benchArg(args, 'trials', '9'));
/** Seeds per fleet row (each a ~1–2 min run). */
const fleetTrials = Number(benchArg(args, 'fleet-trials', '1'));
const losses = benchArg(args, 'loss', '0,10,30').split(',').map(Number);
const burst = Number(benchArg(args, 'burst', '0'));
const json = args.includes('--json');

const image = benchImage(size);
const fragSize = maxFragmentSize(EU868, BENCH_DR);
const imageAirtimeS = imageAirtimeMs(size) / 1000;

interface Row {
  nodes: number;
  lossPct: number;
  airtimeS: number;
  unicastS: number;
  vsImage: number;
  meanVsImage: number;
  vsFloor: number;
  vsZeroLoss: number | null;
  confirmedH: number;
  confirmed: string;
  fragments: number;
  /** Downlink frames the simulated radio lost, per node reached (the loss drawn, not the one asked for). */
  seenLossPct: number;
  realS: number;
  speedup: number;
}

const rows: Row[] = [];
const zero = new Map<number, number>();

/** Data fragments the gateway was asked to send (a multicast one counts once). */
function fragmentsSent(r: CampaignResult): number {
  return r.downlinks.filter((d) => isFragment(d)).length;
}

function isFragment(d: Downlink): boolean {
  if (d.fPort !== TS004_PORT) return false;
  try {
    return decodeRequests(d.bytes).some((c) => c.cmd === 'DataFragment');
  } catch {
    return false;
  }
}

const seenLoss = (r: CampaignResult) => drawnLoss(r).pct;

function airtime(r: CampaignResult): number {
  return r.sim.airtimeS.unicast + r.sim.airtimeS.multicast;
}

for (const nodes of sizes) {
  for (const lossPct of losses) {
    const runs: CampaignResult[] = [];
    const n = nodes === 1 ? trials : fleetTrials;
    for (let t = 0; t < n; t++) {
      const loss = parseLossModel(burst > 0 ? `${lossPct}%,burst=${burst}` : `${lossPct}%`);
      // The agent runs with its defaults (answer timeouts from the LNS's txack, the group's window 60 s + 10 s per member ahead).
      runs.push(await runCampaign({ nodes, image, loss, seed: 1300 + t * 17 + lossPct }));
      if (!json) process.stderr.write(`  ${nodes} node(s), ${lossPct} % loss, run ${t + 1}/${n}: ${airtime(runs.at(-1)!).toFixed(1)} s airtime\n`);
    }
    const a = median(runs.map(airtime));
    if (lossPct === 0) zero.set(nodes, a);
    const z = zero.get(nodes);
    const confirmed = runs.reduce((k, r) => k + r.confirmed.length, 0);
    rows.push({
      nodes, lossPct, airtimeS: a, unicastS: median(runs.map((r) => r.sim.airtimeS.unicast)), vsImage: a / imageAirtimeS, meanVsImage: runs.reduce((k, r) => k + airtime(r), 0) / runs.length / imageAirtimeS,
      vsFloor: median(runs.map((r) => (airtime(r) * (1 - seenLoss(r) / 100)) / imageAirtimeS)), vsZeroLoss: z ? a / z : null,
      confirmedH: median(runs.map((r) => r.elapsedMs)) / 3_600_000, confirmed: `${confirmed}/${nodes * n}`,
      fragments: median(runs.map(fragmentsSent)), seenLossPct: median(runs.map(seenLoss)),
      realS: median(runs.map((r) => r.sim.realS)), speedup: median(runs.map((r) => r.sim.speedup)),
    });
  }
}

const fleetVsOne = losses.flatMap((l) => {
  const one = rows.find((r) => r.nodes === 1 && r.lossPct === l);
  const many = rows.find((r) => r.nodes === fleet && r.lossPct === l);
  return one && many ? [{ lossPct: l, ratio: many.airtimeS / one.airtimeS }] : [];
});

if (json) {
  console.log(JSON.stringify({ size, fragSize, imageAirtimeS, burst, rows, fleetVsOne }, null, 2));
} else {
  console.log(`LoRa FUOTA through ferry lns-sim: ${size} B image, EU868 DR5 (${fragSize} B fragments), image airtime ${imageAirtimeS.toFixed(1)} s${burst ? `, bursty loss (mean burst ${burst})` : ', i.i.d. loss'}`);
  console.log('nodes  loss (seen)  airtime s (unicast)  ×image (mean)  ×floor  ×0%-row  to confirmed  confirmed  fragments  real s  speed-up');
  for (const r of rows) {
    console.log(
      `${String(r.nodes).padStart(5)}  ${String(r.lossPct).padStart(3)} % (${r.seenLossPct.toFixed(1).padStart(4)})  ${r.airtimeS.toFixed(1).padStart(9)} (${r.unicastS.toFixed(1).padStart(5)})  ${r.vsImage.toFixed(3).padStart(6)} (${r.meanVsImage.toFixed(3)})  ${r.vsFloor.toFixed(3).padStart(6)}  ${(r.vsZeroLoss?.toFixed(3) ?? '-').padStart(7)}  ${r.confirmedH.toFixed(2).padStart(10)} h  ${r.confirmed.padStart(9)}  ${String(r.fragments).padStart(9)}  ${r.realS.toFixed(1).padStart(6)}  ${r.speedup.toFixed(0).padStart(8)}×`,
    );
  }
  for (const f of fleetVsOne) console.log(`${fleet} nodes / 1 node airtime at ${f.lossPct} % loss: ${f.ratio.toFixed(3)}×`);
}
