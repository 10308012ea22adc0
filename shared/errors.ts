/**
 * Reason codes carried on the wire (Report.reason, Error.reason, Cancel.reason) and used for every
 * rejection inside ferry. Numbers are part of protocol v1: never renumber, only append.
 */
export const Reason = {
  none: 0,
  malformed: 1,
  unknownType: 2,
  oversize: 3,
  badSignature: 4,
  digestMismatch: 5,
  wrongHardware: 6,
  downgrade: 7,
  securityDowngrade: 8,
  unknownKey: 9,
  selfTestFailed: 10,
  bootFailed: 11,
  watchdog: 12,
  invalidImage: 13,
  noSpace: 14,
  timeout: 15,
  cancelled: 16,
  unknownSession: 17,
  flashError: 18,
  busy: 19,
  badField: 20,
  deltaBaseMismatch: 21,
  deltaFailed: 22,
  noRollbackSupport: 23,
  unsupportedVersion: 24,
  unknownDevice: 25,
} as const;

export type ReasonName = keyof typeof Reason;
export type ReasonCode = (typeof Reason)[ReasonName];

const namesByCode = new Map<number, ReasonName>(
  (Object.entries(Reason) as [ReasonName, number][]).map(([name, code]) => [code, name]),
);

/** Human name for a wire reason code; unknown codes stay visible as numbers rather than vanish. */
export function reasonName(code: number): string {
  return namesByCode.get(code) ?? `reason#${code}`;
}

/** A rejection of bad input: carries the wire reason and a message naming what was wrong. */
export class ProtocolError extends Error {
  readonly reason: ReasonCode;
  constructor(reason: ReasonCode, message: string) {
    super(message);
    this.name = 'ProtocolError';
    this.reason = reason;
  }
  get reasonName(): string {
    return reasonName(this.reason);
  }
}
