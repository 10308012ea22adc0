import type { KeyObject } from 'node:crypto';
import { SimNode, type SimNodeOptions } from './node.js';

/**
 * A fleet of simulated nodes with ids `<idPrefix>-1` … `<idPrefix>-N`, for `ferry sim`, `ferry demo`
 * and tests. The last `failSelfTest` nodes (a number) or the listed ids fail their self-test, so a
 * demo of five with one failing has node-5 roll back.
 */
export interface FleetOptions extends Omit<SimNodeOptions, 'deviceId' | 'failSelfTest' | 'flash'> {
  brokerUrl: string;
  count: number;
  hw: string;
  version: string;
  trust: KeyObject[];
  /** Id prefix; default "node". */
  idPrefix?: string;
  /** How many nodes fail their self-test (the last ones), or exactly which ids. */
  failSelfTest?: number | string[];
  /** How the failing nodes fail: reported failure (default) or a watchdog reset. */
  failMode?: true | 'watchdog';
  /** Per-node overrides, by id. */
  perNode?: Record<string, Partial<SimNodeOptions>>;
}

export interface Fleet {
  nodes: SimNode[];
  byId(id: string): SimNode | undefined;
  stop(): Promise<void>;
}

export function fleetIds(count: number, idPrefix = 'node'): string[] {
  return Array.from({ length: count }, (_, i) => `${idPrefix}-${i + 1}`);
}

export async function startFleet(opts: FleetOptions): Promise<Fleet> {
  const { count, idPrefix, failSelfTest, failMode, perNode, ...common } = opts;
  if (!Number.isInteger(count) || count < 1) throw new RangeError(`fleet size ${count} must be a positive integer`);
  const ids = fleetIds(count, idPrefix);
  const failing = new Set(Array.isArray(failSelfTest) ? failSelfTest : ids.slice(ids.length - Math.min(failSelfTest ?? 0, count)));
  if (failSelfTest === 0) failing.clear();
  const nodes = ids.map((id) => new SimNode({ ...common, deviceId: id, failSelfTest: failing.has(id) ? (failMode ?? true) : false, ...perNode?.[id] }));
  await Promise.all(nodes.map((n) => n.start()));
  return {
    nodes,
    byId: (id) => nodes.find((n) => n.id === id),
    async stop() {
      await Promise.all(nodes.map((n) => n.stop()));
    },
  };
}
