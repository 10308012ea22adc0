import { benchArg } from './bench-args.js';
import { runCampaign, type Downlink } from '../../harness/lora/campaign.js';
import { decodeRequests, TS004_PORT } from '../../shared/lora/ts004.js';
import { TS005_PORT } from '../../shared/lora/ts005.js';
import { FERRY_LORA_PORT } from '../../shared/lora/control.js';
import { parseLossModel } from '../../device/lora/radio.js';
import { EU868, frameAirtimeMs } from '../../shared/lora/regions.js';
import { BENCH_DR, benchImage, drawnLoss, imageAirtimeMs } from './lora-common.js';

/**
 * scripts/bench/lora-breakdown: where a LoRa campaign's downlink airtime goes, by kind of frame (uncoded and coded
 * fragments, TS004 setup/status/delete, TS005, ferry control), for one run of harness/lora/campaign.ts.
 * Frames are costed at the data rate they were sent at as the simulator reports it (DR5 here).
 *
 *   node dist/scripts/bench/lora-breakdown.js [--nodes 1] [--loss 10] [--size 102400] [--seed 1310] [--json]
 */
const args = process.argv.slice(2);
const nodes = Number(benchArg(args, 'nodes', '1'));
const lossPct = Number(benchArg(args, 'loss', '10'));
const size = Number(benchArg(args, 'size', '102400'));
const seed = Number(benchArg(args, 'seed', String(1300 + lossPct)));
const json = args.includes('--json');

const image = benchImage(size);
const imageMs = imageAirtimeMs(size);

function kindOf(d: Downlink): string {
  if (d.fPort === FERRY_LORA_PORT) return 'ferry control';
  if (d.fPort === TS005_PORT) return 'TS005';
  if (d.fPort !== TS004_PORT) return `fPort ${d.fPort}`;
  try {
    const c = decodeRequests(d.bytes)[0];
    if (c.cmd === 'DataFragment') return 'fragment';
    return c.cmd;
  } catch {
    return 'TS004 (bad)';
  }
}

const r = await runCampaign({ nodes, image, loss: parseLossModel(`${lossPct}%`), seed });
const by = new Map<string, { frames: number; ms: number }>();
for (const d of r.downlinks) {
  const k = `${kindOf(d)}${d.multicast ? ' (multicast)' : ''}`;
  const e = by.get(k) ?? { frames: 0, ms: 0 };
  e.frames++;
  e.ms += frameAirtimeMs(EU868, BENCH_DR, d.bytes.length, 'down');
  by.set(k, e);
}
const total = [...by.values()].reduce((a, e) => a + e.ms, 0);
if (json) console.log(JSON.stringify({ nodes, lossPct, imageMs, total, confirmed: r.confirmed.length, by: Object.fromEntries(by) }));
else {
  console.log(`${nodes} node(s), ${lossPct} % loss, seed ${seed}: image ${(imageMs / 1000).toFixed(1)} s; frames at DR5 ${(total / 1000).toFixed(1)} s = ${(total / imageMs).toFixed(3)}× (sim counted ${(r.sim.airtimeS.unicast + r.sim.airtimeS.multicast).toFixed(1)} s); ${r.confirmed.length}/${nodes} confirmed`);
  const { lost, delivered, pct } = drawnLoss(r);
  console.log(`  frames delivered ${delivered}, lost ${lost} (${pct.toFixed(1)} %)`);
  for (const [k, e] of [...by].sort((a, b) => b[1].ms - a[1].ms)) console.log(`  ${k.padEnd(32)} ${String(e.frames).padStart(6)} frames ${(e.ms / 1000).toFixed(2).padStart(8)} s  ${((e.ms / imageMs) * 100).toFixed(2).padStart(6)} % of image`);
}
