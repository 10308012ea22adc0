/**
 * The simulator's clock. Virtual time runs `warp` times faster than real time and, when `jump` is on, leaps to
 * the next scheduled event as soon as nothing has arrived from outside for `settleMs` of real time (a discrete
 * event simulation that still lets a real agent answer between events). Airtime, duty-cycle waits, RX windows
 * and Class C sessions are all virtual; the ratio virtual/real is the speed-up a run reports.
 */
export interface ClockOptions {
  /** Virtual ms per real ms (1 = real time). */
  warp: number;
  jump: boolean;
  /** Real ms of quiet before a jump. */
  settleMs: number;
  /** Unix ms that virtual time 0 maps to (LoRaWAN GPS time is derived from it). */
  epochMs: number;
}

/** Real ms a handed-off message may hold the clock before it counts as lost. */
const HOLD_MAX_MS = 2000;

interface Timer {
  at: number;
  seq: number;
  run: () => void;
}

export class SimClock {
  private readonly realStart = performance.now();
  private offset = 0;
  private lastInput = performance.now();
  private readonly timers: Timer[] = [];
  private seq = 0;
  private wake: NodeJS.Timeout | undefined;
  private stopped = false;
  private current: number | undefined;
  /** Messages between the simulator and a component sharing this clock, sent and not yet handled. */
  private inFlight = 0;
  private inFlightSince = 0;
  private shared = false;

  constructor(readonly opts: ClockOptions) {
    if (!(opts.warp > 0)) throw new RangeError(`time warp ${opts.warp} must be > 0`);
  }

  /**
   * Virtual ms since the simulation started. Inside a timer callback it is the timer's own time, not the wall
   * clock's: a callback that runs late (a loaded machine) still acts at the instant it was scheduled for, so
   * airtime and duty-cycle arithmetic stay exact whatever the real-time jitter.
   */
  now(): number {
    return this.current ?? this.wallNow();
  }

  private wallNow(): number {
    return (performance.now() - this.realStart) * this.opts.warp + this.offset;
  }

  unixMs(): number {
    return this.opts.epochMs + this.now();
  }

  /** Real ms elapsed. */
  realMs(): number {
    return performance.now() - this.realStart;
  }

  /** Something arrived from outside: hold jumps until it settles. */
  touch(): void {
    this.lastInput = performance.now();
  }

  /**
   * A message to the component sharing this clock (an uplink to the agent, a downlink to the simulator) is on its
   * way through the broker: no jump until the other side says it `arrived`, however long the broker takes on a
   * loaded machine. Without this, time could leap past an answer timeout while the answer is in flight. A message
   * that never arrives (dropped as malformed) holds jumps for at most HOLD_MAX_MS of real time.
   */
  handoff(): void {
    if (!this.shared) return;
    this.inFlight++;
    this.inFlightSince = performance.now();
  }

  arrived(): void {
    if (this.inFlight > 0) this.inFlight--;
    this.touch();
    this.arm();
  }

  private held(): boolean {
    if (this.inFlight > 0 && performance.now() - this.inFlightSince > HOLD_MAX_MS) this.inFlight = 0;
    return this.inFlight > 0;
  }

  /** Runs `run` at virtual time `virtualMs`; the handle cancels it. */
  at(virtualMs: number, run: () => void): { cancel: () => void } {
    const t: Timer = { at: virtualMs, seq: this.seq++, run };
    this.timers.push(t);
    this.timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
    this.arm();
    return {
      cancel: () => {
        const i = this.timers.indexOf(t);
        if (i >= 0) this.timers.splice(i, 1);
      },
    };
  }

  after(ms: number, run: () => void): { cancel: () => void } {
    return this.at(this.now() + Math.max(0, ms), run);
  }

  /** This clock in Unix ms, for a component that shares it (the agent's LoRa runtime next to the simulator). */
  asUnixClock(): { now: () => number; after: (ms: number, run: () => void) => { cancel: () => void }; handoff: () => void; arrived: () => void } {
    this.shared = true;
    return { now: () => this.unixMs(), after: (ms, run) => this.after(ms, run), handoff: () => this.handoff(), arrived: () => this.arrived() };
  }

  stop(): void {
    this.stopped = true;
    if (this.wake) clearTimeout(this.wake);
  }

  private arm(): void {
    if (this.stopped) return;
    if (this.wake) clearTimeout(this.wake);
    const next = this.timers[0];
    if (!next) return;
    const realWait = Math.max(0, (next.at - this.wallNow()) / this.opts.warp);
    const quietFor = performance.now() - this.lastInput;
    const wait = !this.opts.jump ? realWait : this.held() ? Math.min(realWait, this.opts.settleMs) : Math.min(realWait, Math.max(0, this.opts.settleMs - quietFor));
    this.wake = setTimeout(() => this.fire(), Math.min(wait, 2 ** 31 - 1));
  }

  private fire(): void {
    this.wake = undefined;
    const quiet = performance.now() - this.lastInput >= this.opts.settleMs && !this.held();
    const next = this.timers[0];
    if (next && this.opts.jump && quiet && next.at > this.wallNow()) this.offset += next.at - this.wallNow();
    const now = this.wallNow();
    while (this.timers.length > 0 && this.timers[0].at <= now && !this.stopped) {
      const t = this.timers.shift()!;
      this.current = t.at;
      try {
        t.run();
      } finally {
        this.current = undefined;
      }
    }
    this.arm();
  }
}
