/**
 * The retained verdict an agent publishes on `P/r/<hw>/<ver>/status/<agent>` (docs/protocol.md
 * section 2.1): whether it accepted a release (verified, stored, offerable) or refused it, and why.
 * JSON so operators and scripts read it without a CBOR decoder. Pure encode/decode, no I/O.
 */
export type ReleaseVerdict = 'accepted' | 'refused';

export interface ReleaseStatus {
  v: 1;
  agent: string;
  hw: string;
  version: string;
  state: ReleaseVerdict;
  /** Image digest (hex) of the manifest this verdict is about. */
  digest: string;
  /** Refused only: the reason name (unknownKey, badSignature, digestMismatch, versionConflict, incomplete, ...). */
  reason?: string;
  detail?: string;
  /** True once the agent honours a withdraw marker for this release. */
  withdrawn?: boolean;
  /** Unix seconds. */
  at: number;
}

/** Reason names that are not wire reason codes (docs/protocol.md section 7) but release verdicts. */
export const ReleaseReason = {
  versionConflict: 'versionConflict',
  incomplete: 'incomplete',
} as const;

const MAX_STATUS_BYTES = 4096;

export function encodeReleaseStatus(s: ReleaseStatus): string {
  const doc = { ...s, detail: s.detail?.slice(0, 512) };
  return JSON.stringify(doc);
}

/** Decodes a retained release status; throws an Error naming what is wrong. */
export function decodeReleaseStatus(payload: Buffer | string): ReleaseStatus {
  const text = typeof payload === 'string' ? payload : payload.toString('utf8');
  if (text.length > MAX_STATUS_BYTES) throw new Error(`release status of ${text.length} bytes exceeds ${MAX_STATUS_BYTES}`);
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    throw new Error('release status is not JSON');
  }
  if (typeof o !== 'object' || o === null) throw new Error('release status is not a JSON object');
  const r = o as Record<string, unknown>;
  for (const k of ['agent', 'hw', 'version', 'digest'] as const) {
    if (typeof r[k] !== 'string') throw new Error(`release status field "${k}" is missing or not a string`);
  }
  if (r.state !== 'accepted' && r.state !== 'refused') throw new Error(`release status field "state" must be "accepted" or "refused"`);
  if (r.reason !== undefined && typeof r.reason !== 'string') throw new Error('release status field "reason" is not a string');
  if (r.detail !== undefined && typeof r.detail !== 'string') throw new Error('release status field "detail" is not a string');
  if (typeof r.at !== 'number') throw new Error('release status field "at" is missing or not a number');
  return {
    v: 1,
    agent: r.agent as string,
    hw: r.hw as string,
    version: r.version as string,
    state: r.state,
    digest: r.digest as string,
    reason: r.reason as string | undefined,
    detail: r.detail as string | undefined,
    withdrawn: r.withdrawn === true ? true : undefined,
    at: r.at,
  };
}

/** One line for humans: `accepted`, or `refused: unknownKey (detail)`. */
export function describeVerdict(s: ReleaseStatus): string {
  if (s.state === 'accepted') return s.withdrawn ? 'accepted, withdrawn' : 'accepted';
  return `refused: ${s.reason ?? 'unknown'}${s.detail ? ` (${s.detail})` : ''}`;
}

/**
 * The retained marker on `P/r/<hw>/<ver>/withdrawn` (docs/protocol.md §2.2). A restore is a marker
 * too, not an empty message: an agent that was offline when the release was restored learns it from
 * the retained marker at its next connect, which an empty (deleted) retained message cannot tell it.
 */
export function encodeWithdrawMarker(withdrawn: boolean, at: number): Buffer {
  return Buffer.from(JSON.stringify({ v: 1, at, withdrawn }));
}

/** Whether a marker payload withdraws the release: empty or `withdrawn: false` restores; anything else withdraws. */
export function markerWithdraws(payload: Buffer): boolean {
  if (payload.length === 0) return false;
  try {
    return (JSON.parse(payload.toString('utf8')) as { withdrawn?: unknown }).withdrawn !== false;
  } catch {
    return true;
  }
}
