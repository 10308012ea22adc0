import t from 'tap';
import { runCampaign, type Downlink } from '../harness/lora/campaign.js';
import { runSeed } from '../harness/seeded.js';
import { decodeRequests, TS004_PORT } from '../shared/lora/ts004.js';
import { generateOperatorKey } from '../shared/manifest.js';

/**
 * The real agent (`Agent` with `lora`, ChirpStack adapter) against the real simulator (`ferry lns-sim` internals)
 * through real aedes brokers: a signed release, simulated nodes that verify it themselves, outcomes read from the
 * agent's retained statuses. Both run on the simulator's virtual clock (jump mode), so timeouts are virtual and a
 * loaded machine slows the run without changing what happens on the radio; waits are on outcomes, never sleeps.
 */
const image = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 37 + (i >> 5)) & 0xff));

function ts004(d: Downlink) {
  if (d.fPort !== TS004_PORT) return [];
  try {
    return decodeRequests(d.bytes);
  } catch {
    return [];
  }
}

t.test('3 nodes, 10 % downlink loss: one reboots mid-block and resumes, one fails its self-test', async (t) => {
  const blockKiB = 4;
  // Multicast fragments of the block in flight, to decide when the power cut comes.
  let setup: { block: number; nbFrag: number } | undefined;
  let sentOfBlock = 0;
  let held: { block: number; nbFrag: number } | undefined;
  const victimDev = '70b3d57ed0000000'; // the simulator's node 0
  const r = await runCampaign({
    nodes: 3, image: image(14_000), loss: { kind: 'iid', p: 0.1 }, seed: runSeed(1313), failSelfTest: new Set([2]), lora: { blockKiB },
    timeoutMs: 240_000,
    resetWhen: (d) => {
      for (const c of ts004(d)) {
        if (!d.multicast) continue;
        if (c.cmd === 'FragSessionSetupReq') {
          setup = { block: c.descriptor & 0xffff, nbFrag: c.nbFrag };
          sentOfBlock = 0;
        } else if (c.cmd === 'DataFragment' && setup && setup.block >= 1) {
          // Power cut once 70 % of an image block went out: the node holds most of it.
          if (++sentOfBlock >= Math.ceil(setup.nbFrag * 0.7)) {
            held = setup;
            return victimDev;
          }
        }
      }
      return undefined;
    },
  });
  t.equal(r.confirmed.length, 2, `confirmed: ${r.confirmed.join(', ')}; others ${JSON.stringify(r.failed.map((s) => [s.id, s.state, s.detail]))}`);
  const ids = [...r.statuses.keys()].sort();
  t.ok(r.reset, 'a node was power-cycled mid-transfer');
  const rebooted = r.reset!.devEui;
  t.equal(r.statuses.get(rebooted)?.state, 'confirmed', 'the rebooted node confirmed');
  t.equal(r.statuses.get(rebooted)?.runningVersion, '2.0.0');
  const failing = ids[2];
  t.equal(r.statuses.get(failing)?.state, 'rolledBack', 'the node failing its self-test is reported rolledBack');
  t.same(r.versions, ['2.0.0', '2.0.0', '1.0.0'], 'the node model runs what the agent reports');
  // After the reboot the node leaves the group: everything it gets is unicast. For the block it was in, it must
  // get fewer fragments than the block has (from scratch it would need all of them, plus loss).
  const after = r.downlinks.slice(r.reset!.index).filter((d) => !d.multicast && d.to === rebooted);
  const ofBlock = after.flatMap((d) => ts004(d)).filter((c) => c.cmd === 'DataFragment');
  const setups = after.flatMap((d) => ts004(d)).filter((c) => c.cmd === 'FragSessionSetupReq');
  const resumed = setups.find((c) => c.cmd === 'FragSessionSetupReq' && (c.descriptor & 0xffff) === held!.block);
  t.ok(resumed, `block ${held!.block} set up again for the rebooted node`);
  const blocksBefore = setups.filter((c) => c.cmd === 'FragSessionSetupReq' && (c.descriptor & 0xffff) < held!.block);
  t.equal(blocksBefore.length, 0, 'no block it completed before the reboot is set up again');
  const fragsOfHeld = ofBlock.filter((c) => c.cmd === 'DataFragment' && c.fragIndex === held!.block % 4).length;
  t.ok(fragsOfHeld < held!.nbFrag, `${fragsOfHeld} fragments of block ${held!.block} resent after the reboot, < its ${held!.nbFrag}`);
  t.ok(r.sim.airtimeS.multicast > 0, 'fragments went multicast');
});

t.test('the nodes check the manifest themselves: a foreign signature is rejected, nothing is installed', async (t) => {
  const other = generateOperatorKey();
  const r = await runCampaign({ nodes: 1, image: image(6_000), loss: { kind: 'iid', p: 0 }, seed: 5, sim: { trust: [other.publicKey] }, lora: { blockKiB: 4 }, timeoutMs: 120_000 });
  t.equal(r.confirmed.length, 0);
  t.match(r.failed, [{ state: 'rejected' }]);
  t.same(r.versions, ['1.0.0']);
});
