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

t.test('3 nodes, 10 % downlink loss: one reboots mid-transfer and resumes, one fails its self-test', async (t) => {
  const victim = '70b3d57ed0000000'; // the simulator's node 0
  const resumeAt = 2; // power cut when the group's block 2 is set up: the node holds blocks 0 and 1
  const nbFrag = new Map<number, number>();
  const r = await runCampaign({
    nodes: 3, image: image(14_000), loss: { kind: 'iid', p: 0.1 }, seed: runSeed(1313), failSelfTest: new Set([2]), lora: { blockKiB: 4 }, timeoutMs: 240_000,
    resetWhen: (d) => {
      for (const c of ts004(d)) {
        if (c.cmd !== 'FragSessionSetupReq') continue;
        nbFrag.set(c.descriptor & 0xffff, c.nbFrag);
        if (d.multicast && (c.descriptor & 0xffff) === resumeAt) return victim;
      }
      return undefined;
    },
  });
  t.same(r.confirmed.sort(), [victim, '70b3d57ed0000001'], `confirmed; others ${JSON.stringify(r.failed.map((s) => [s.id, s.state, s.detail]))}`);
  t.equal(r.reset?.devEui, victim, 'a node was power-cycled mid-transfer');
  t.equal(r.statuses.get(victim)?.runningVersion, '2.0.0', 'the rebooted node runs the new version');
  t.equal(r.statuses.get('70b3d57ed0000002')?.state, 'rolledBack', 'the node failing its self-test is reported rolledBack');
  t.same(r.versions, ['2.0.0', '2.0.0', '1.0.0'], 'the node model runs what the agent reports');
  // After the power cut the node is on its own (unicast). Blocks it held are never set up or sent again.
  const after = r.downlinks.slice(r.reset!.index).filter((d) => !d.multicast && d.to === victim).flatMap(ts004);
  const setUp = after.flatMap((c) => (c.cmd === 'FragSessionSetupReq' ? [c.descriptor & 0xffff] : []));
  t.ok(setUp.length > 0 && Math.min(...setUp) === resumeAt, `blocks set up again after the reboot: ${[...new Set(setUp)].join(', ')} (it held 0..${resumeAt - 1})`);
  // Every fragment sent to it after the cut belongs to a session of a block it did not hold.
  const blockOf = new Map<number, number>();
  const perBlock = new Map<number, number>();
  for (const c of after) {
    if (c.cmd === 'FragSessionSetupReq') blockOf.set(c.fragIndex, c.descriptor & 0xffff);
    if (c.cmd === 'DataFragment') perBlock.set(blockOf.get(c.fragIndex) ?? -1, (perBlock.get(blockOf.get(c.fragIndex) ?? -1) ?? 0) + 1);
  }
  t.ok([...perBlock.keys()].every((b) => b >= resumeAt), `fragments after the reboot by block: ${JSON.stringify([...perBlock])}`);
  for (const [b, k] of perBlock) t.ok(k >= nbFrag.get(b)! || b > resumeAt, `block ${b}: ${k} fragments for its ${nbFrag.get(b) ?? '?'}`);
  t.ok(r.sim.airtimeS.multicast > 0, 'fragments went multicast');
});

t.test('the nodes check the manifest themselves: a foreign signature is rejected, nothing is installed', async (t) => {
  const other = generateOperatorKey();
  const r = await runCampaign({ nodes: 1, image: image(6_000), loss: { kind: 'iid', p: 0 }, seed: 5, sim: { trust: [other.publicKey] }, lora: { blockKiB: 4 }, timeoutMs: 120_000 });
  t.equal(r.confirmed.length, 0);
  t.match(r.failed, [{ state: 'rejected' }]);
  t.same(r.versions, ['1.0.0']);
});

t.test('6 nodes, 30 % downlink loss, the agent\'s defaults: every node confirmed, the unicast repair only resends what a node lacks', async (t) => {
  const r = await runCampaign({ nodes: 6, image: image(8_000), loss: { kind: 'iid', p: 0.3 }, seed: runSeed(1330), timeoutMs: 240_000 });
  t.equal(r.confirmed.length, 6, `all confirmed; others ${JSON.stringify(r.failed.map((s) => [s.id, s.state, s.detail]))}`);
  t.same(r.versions, Array(6).fill('2.0.0'), 'every node model runs the release');
  t.ok(r.sim.airtimeS.multicast > 0, 'the blocks went to the group');
  // Whatever went unicast as fragments (a member on its own) was uncoded: exact resends, never parity rows.
  const unicastFragments = r.downlinks.filter((d) => !d.multicast).flatMap(ts004).filter((c) => c.cmd === 'DataFragment');
  const setups = new Map<number, number>();
  for (const c of r.downlinks.flatMap(ts004)) if (c.cmd === 'FragSessionSetupReq') setups.set(c.fragIndex, c.nbFrag);
  t.ok(unicastFragments.every((c) => c.cmd === 'DataFragment' && c.counter <= (setups.get(c.fragIndex) ?? 0)), `${unicastFragments.length} unicast fragments, all uncoded`);
});
