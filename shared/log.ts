/**
 * The logging callback every component takes (agent, broker, CLI): a level, a human sentence, and
 * optional structured fields that a JSON log keeps as their own keys (so `jq 'select(.device=="n1")'`
 * works without parsing sentences). The sentence stays complete on its own: fields repeat, never replace.
 */
export type LogLevel = 'info' | 'warn' | 'error';

export interface LogFields {
  /** Device id of the node the line is about. */
  device?: string;
  /** Release as `hw/version`. */
  release?: string;
  /** Transfer session number. */
  session?: number;
  /** Reason name (docs/protocol.md section 7) or a short cause. */
  reason?: string;
  [key: string]: unknown;
}

export type LogFn = (level: LogLevel, msg: string, fields?: LogFields) => void;

/** `hw/version`: how a release is named in log fields. */
export function releaseName(hw: string, version: string): string {
  return `${hw}/${version}`;
}
