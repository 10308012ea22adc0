/** mulberry32: a small deterministic PRNG, so a fault test or bench run can be repeated from its seed. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The seed for this run: FERRY_SEED when set (to replay a failure), else a fixed default. */
export function runSeed(fallback: number): number {
  const env = Number(process.env.FERRY_SEED);
  return Number.isInteger(env) ? env : fallback;
}
