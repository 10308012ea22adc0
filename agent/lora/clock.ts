/**
 * The time the LoRa runtime reads and waits on. Real by default; a simulator shares its virtual clock so that
 * airtime, duty-cycle waits, Class C windows (TS005 SessionTime) and answer timeouts all count in the same time
 * as the radio they describe, whatever the time warp.
 */
export type LoraTimer = { readonly cancel: () => void };

export interface LoraClock {
  /** Unix ms. */
  now(): number;
  after(ms: number, run: () => void): LoraTimer;
  /**
   * Only on a clock shared with a simulator: a message to it is about to be published (`handoff`), or one from it
   * was handled (`arrived`); the simulated time does not leap ahead while a message is in flight.
   */
  handoff?(): void;
  arrived?(): void;
}

export const realClock: LoraClock = {
  now: () => Date.now(),
  after(ms, run) {
    const t = setTimeout(run, Math.max(0, ms));
    return { cancel: () => clearTimeout(t) };
  },
};

export function cancel(t: LoraTimer | undefined): void {
  t?.cancel();
}
