import { ProtocolError, Reason } from './errors.js';

/** Release versions are semantic versions (MAJOR.MINOR.PATCH[-PRERELEASE]); build metadata is not allowed. */
const SEMVER = /^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})(?:-([0-9A-Za-z.-]{1,20}))?$/;

export function isVersion(v: string): boolean {
  return SEMVER.test(v);
}

export function assertVersion(v: string, what: string): void {
  if (!isVersion(v)) throw new ProtocolError(Reason.badField, `${what}: "${v}" is not a version like 1.2.3`);
}

/** Semver precedence: negative when a < b. Unparseable versions sort lowest so they never win. */
export function compareVersions(a: string, b: string): number {
  const ma = SEMVER.exec(a);
  const mb = SEMVER.exec(b);
  if (!ma || !mb) return (ma ? 1 : 0) - (mb ? 1 : 0);
  for (let i = 1; i <= 3; i++) {
    const d = Number(ma[i]) - Number(mb[i]);
    if (d !== 0) return Math.sign(d);
  }
  const pa = ma[4];
  const pb = mb[4];
  if (pa === pb) return 0;
  if (pa === undefined) return 1; // a release outranks its pre-releases
  if (pb === undefined) return -1;
  const xa = pa.split('.');
  const xb = pb.split('.');
  for (let i = 0; i < Math.max(xa.length, xb.length); i++) {
    if (xa[i] === undefined) return -1;
    if (xb[i] === undefined) return 1;
    const na = /^\d+$/.test(xa[i]) ? Number(xa[i]) : NaN;
    const nb = /^\d+$/.test(xb[i]) ? Number(xb[i]) : NaN;
    if (!Number.isNaN(na) && !Number.isNaN(nb)) {
      if (na !== nb) return Math.sign(na - nb);
    } else if (xa[i] !== xb[i]) {
      return xa[i] < xb[i] ? -1 : 1;
    }
  }
  return 0;
}
