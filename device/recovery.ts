/**
 * Safe (recovery) mode, after seed 000's "Safe Boot System": count boots whose application never
 * came up, and after too many in a row start only a minimal app that stays reachable and can take a
 * fresh image, instead of crashing again and again.
 *
 * The count lives in RTC memory, not flash: on an ESP32, RTC_NOINIT_ATTR variables survive software
 * and watchdog resets but not power loss (esp_reset_reason tells which happened). A crash loop is a
 * chain of watchdog resets, so that is enough to see one, and it costs no flash writes and no wear on
 * every boot. A power cycle starts the count again, as unplugging a crashing device would.
 */
export type ResetReason = 'powerOn' | 'software' | 'watchdog';

/** Why a node is in recovery mode. */
export type RecoveryCause =
  /** The application failed to start (watchdog before it was up) `safeModeAfter` boots in a row, on any slot. */
  | 'bootFailures'
  /** The running image failed (self-test, or hung through its trial boots) and there is no previous image. */
  | 'imageFailed';

export const DEFAULT_SAFE_MODE_AFTER = 3;

export class CrashCounter {
  /** Consecutive boots that ended in a watchdog reset before the application was up. */
  crashes = 0;
  private healthy = false;

  /** At every boot, with why the previous one ended. */
  onReset(reset: ResetReason): void {
    if (reset === 'powerOn') this.crashes = 0;
    else if (reset === 'watchdog' && !this.healthy) this.crashes++;
    this.healthy = false;
  }

  /** The application is up (and a trial image passed its self-test): the crash streak is over. */
  markHealthy(): void {
    this.healthy = true;
    this.crashes = 0;
  }

  /**
   * Whether this boot starts in recovery mode. Entering it resets the count, as seed 000 does: after
   * the next reset the node tries its normal application again (the fault may have been transient).
   */
  enterRecovery(safeModeAfter: number): boolean {
    if (this.crashes < safeModeAfter) return false;
    this.crashes = 0;
    return true;
  }
}

export function checkSafeModeAfter(n: number): number {
  if (!Number.isInteger(n) || n < 1 || n > 100) throw new RangeError(`safeModeAfter ${n} must be an integer 1..100`);
  return n;
}
