import mqtt from 'mqtt';
import { peekManifest } from '../shared/manifest.js';
import { decodeReleaseStatus, encodeWithdrawMarker, markerWithdraws, type ReleaseStatus } from '../shared/release-status.js';
import { topics as makeTopics } from '../shared/topics.js';

export interface BrokerAccess {
  brokerUrl: string;
  prefix?: string;
  username?: string;
  password?: string;
}

/** One release as the broker holds it: its manifest fields, withdraw marker and the agents' verdicts. */
export interface ReleaseView {
  hw: string;
  version: string;
  securityVersion: number;
  size: number;
  digest: string;
  created: number;
  flags: number;
  withdrawn: boolean;
  statuses: ReleaseStatus[];
}

/** How long retained messages may take to arrive after the subscription is granted. */
const SETTLE_MS = 500;

async function connect(a: BrokerAccess) {
  return mqtt.connectAsync(a.brokerUrl, { protocolVersion: 4, username: a.username, password: a.password, reconnectPeriod: 0, connectTimeout: 10_000 });
}

/** Reads every retained release (or those of one hw / hw+version) with its verdicts. */
export async function readReleases(a: BrokerAccess, only: { hw?: string; version?: string } = {}): Promise<ReleaseView[]> {
  const t = makeTopics(a.prefix);
  const hw = only.hw ?? '+';
  const ver = only.version ?? '+';
  const P = t.prefix;
  const client = await connect(a);
  const manifests = new Map<string, ReleaseView>();
  const statuses = new Map<string, ReleaseStatus[]>();
  const withdrawn = new Set<string>();
  let last = Date.now();
  client.on('message', (topic, payload) => {
    last = Date.now();
    const levels = topic.slice(P.length + 1).split('/');
    if (levels[0] !== 'r' || payload.length === 0) return;
    const key = `${levels[1]}/${levels[2]}`;
    try {
      if (levels[3] === 'manifest') {
        const m = peekManifest(payload);
        manifests.set(key, {
          hw: m.hw, version: m.version, securityVersion: m.securityVersion, size: m.size, digest: m.digest.toString('hex'), created: m.created, flags: m.flags, withdrawn: false, statuses: [],
        });
      } else if (levels[3] === 'withdrawn' && markerWithdraws(payload)) withdrawn.add(key);
      else if (levels[3] === 'status') statuses.set(key, [...(statuses.get(key) ?? []), decodeReleaseStatus(payload)]);
    } catch {
      // a damaged retained message is skipped, not fatal to the listing
    }
  });
  try {
    const granted = await client.subscribeAsync([`${P}/r/${hw}/${ver}/manifest`, `${P}/r/${hw}/${ver}/withdrawn`, `${P}/r/${hw}/${ver}/status/+`], { qos: 1 });
    if (granted.some((g) => g.qos === 128)) throw new Error('not authorized to read the release topics (an operator identity is needed)');
    last = Date.now();
    while (Date.now() - last < SETTLE_MS) await new Promise((r) => setTimeout(r, SETTLE_MS - (Date.now() - last) + 1));
  } finally {
    await client.endAsync().catch(() => {});
  }
  const out: ReleaseView[] = [];
  for (const [key, view] of manifests) {
    view.withdrawn = withdrawn.has(key);
    view.statuses = (statuses.get(key) ?? []).sort((x, y) => x.agent.localeCompare(y.agent));
    out.push(view);
  }
  return out.sort((x, y) => x.hw.localeCompare(y.hw) || x.version.localeCompare(y.version, undefined, { numeric: true }));
}

/**
 * Sets (or with `restore`, clears) the retained withdraw marker of a release and checks it reads back:
 * a broker that drops an unauthorised publish still acknowledges it.
 */
export async function setWithdrawn(a: BrokerAccess, hw: string, version: string, restore = false): Promise<void> {
  const t = makeTopics(a.prefix);
  const topic = t.releaseWithdrawn(hw, version);
  const client = await connect(a);
  try {
    const marker = encodeWithdrawMarker(!restore, Math.floor(Date.now() / 1000));
    // The read-back: a probe topic we may read next to it cannot prove the write, so read the marker itself.
    await client.publishAsync(topic, marker, { qos: 1, retain: true });
    const seen = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 5000);
      client.on('message', (tp, payload) => {
        if (tp !== topic) return;
        clearTimeout(timer);
        resolve(payload.equals(marker));
      });
      client.subscribeAsync(topic, { qos: 1 }).then((g) => {
        if (g.some((x) => x.qos === 128)) resolve(false);
      }, () => resolve(false));
    });
    if (!seen) throw new Error(`not authorized to publish: the withdraw marker of ${hw} ${version} never read back`);
  } finally {
    await client.endAsync().catch(() => {});
  }
}
