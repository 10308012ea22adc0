import type { CampaignResult } from '../../harness/lora/campaign.js';
import { EU868, fragmentsAirtimeMs, maxFragmentSize } from '../../shared/lora/regions.js';

/** What the LoRa benches share: the image they send, its airtime at EU868 DR5, and the loss a run drew. */
export const BENCH_DR = 5;

/** A deterministic image of `size` bytes (the benches compare runs, so every run sends the same bytes). */
export function benchImage(size: number): Buffer {
  const image = Buffer.alloc(size);
  for (let i = 0; i < size; i++) image[i] = (i * 131 + (i >> 7) * 17) & 0xff;
  return image;
}

/** Airtime (ms) of the image's M data fragments at the bench DR: no loss, no protocol. */
export function imageAirtimeMs(size: number): number {
  const fragSize = maxFragmentSize(EU868, BENCH_DR);
  return fragmentsAirtimeMs(EU868, BENCH_DR, fragSize, Math.ceil(size / fragSize));
}

/** Downlink frames the simulated radio lost and delivered over every node, and the share lost (%). */
export function drawnLoss(r: CampaignResult): { lost: number; delivered: number; pct: number } {
  const lost = r.sim.nodes.reduce((a, n) => a + n.lost, 0);
  const delivered = r.sim.nodes.reduce((a, n) => a + n.delivered, 0);
  return { lost, delivered, pct: (100 * lost) / Math.max(1, lost + delivered) };
}
