import { statusTable, totalsLines, zoneName, localTime, type StatusDoc } from './status-table.js';
import { fitLine, terminalWidth } from './text-fit.js';
import type { FleetFeed } from './fleet-feed.js';

export interface FrameOptions {
  /** Usable columns; unbounded (a pipe) when absent. */
  width?: number;
  /** Terminal rows: the frame never scrolls, rows that do not fit are counted instead. */
  height?: number;
  now: Date;
  timeZone?: string;
  rollout?: string;
  title: string;
}

/** One screen of `ferry status --watch`: a pure function of the fleet, the clock and the terminal size. */
export function statusFrame(rows: StatusDoc[], o: FrameOptions): string[] {
  const head = [fitLine(`${o.title}  ${localTime(o.now, o.now, o.timeZone)} ${zoneName(o.now, o.timeZone)}`, o.width), ...totalsLines(rows, o.width), ''];
  if (rows.length === 0) return [...head, o.rollout ? `no node reports rollout ${o.rollout} yet` : 'no nodes have reported yet'];
  const table = statusTable(rows, { width: o.width, now: o.now, timeZone: o.timeZone, rollout: o.rollout !== undefined });
  // One line is kept free: a frame as tall as the terminal would scroll it on the last newline.
  const room = o.height === undefined ? Infinity : Math.max(1, o.height - 1 - head.length);
  if (table.length <= room) return [...head, ...table];
  const shown = Math.max(1, room - 1);
  const hidden = table.length - shown;
  return [...head, ...table.slice(0, shown), fitLine(`… ${hidden} more line${hidden === 1 ? '' : 's'} (a taller terminal, --rollout, or --json shows them)`, o.width)];
}

const CLEAR_SCREEN = '\x1b[2J';
const HOME = '\x1b[H';
const CLEAR_EOL = '\x1b[K';
const CLEAR_BELOW = '\x1b[J';

/** What redraws a frame in place: from the top-left corner, each line cleared to its end, everything below cleared. */
export function paint(lines: string[]): string {
  return `${HOME}${lines.map((l) => l + CLEAR_EOL).join('\r\n')}${CLEAR_BELOW}`;
}

/**
 * Redraws the fleet until stopped. On a terminal: in place, from the top-left corner, every line
 * cleared to its end and everything below the frame cleared (no stale lines), at most every
 * `minRedrawMs`, fully after a resize. Not a terminal: a plain snapshot whenever the fleet changed,
 * at most every `intervalMs`, each headed by the time.
 */
export function watchFleet(feed: FleetFeed, o: { out: NodeJS.WriteStream; title: string; rollout?: string; intervalMs: number; timeZone?: string }): () => void {
  const tty = Boolean(o.out.isTTY);
  const minGap = tty ? 250 : o.intervalMs;
  let last = 0;
  let timer: NodeJS.Timeout | undefined;
  let lastText = '';
  const draw = () => {
    timer = undefined;
    last = Date.now();
    const now = new Date();
    const rows = feed.rows(o.rollout);
    if (tty) {
      const lines = statusFrame(rows, { width: terminalWidth(o.out), height: o.out.rows || 24, now, timeZone: o.timeZone, rollout: o.rollout, title: o.title });
      o.out.write(paint(lines));
    } else {
      const lines = statusFrame(rows, { now, timeZone: o.timeZone, rollout: o.rollout, title: o.title });
      const text = lines.slice(1).join('\n');
      if (text === lastText) return;
      lastText = text;
      o.out.write(`${lines.join('\n')}\n\n`);
    }
  };
  const schedule = () => {
    if (timer) return;
    timer = setTimeout(draw, Math.max(0, last + minGap - Date.now()));
  };
  const onResize = () => {
    o.out.write(CLEAR_SCREEN);
    draw();
  };
  feed.onChange = schedule;
  // The clock in the title and the SEEN column move even when nothing else does.
  const tick = setInterval(schedule, tty ? 1000 : o.intervalMs);
  if (tty) {
    o.out.write(CLEAR_SCREEN);
    o.out.on('resize', onResize);
  }
  // The retained statuses arrive right after subscribing: the first frame waits a moment for them
  // rather than flashing "no nodes" first.
  last = Date.now() + 300 - minGap;
  schedule();
  return () => {
    clearInterval(tick);
    clearTimeout(timer);
    if (tty) o.out.off('resize', onResize);
    draw();
    if (tty) o.out.write('\n');
  };
}
