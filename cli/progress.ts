import { fitLine, terminalWidth } from './text-fit.js';

/**
 * Progress for long work on a terminal: a redrawn bar on a TTY, a line every 10 % otherwise (CI
 * logs, pipes), nothing at all when the caller asked for JSON.
 */
export interface Progress {
  update(done: number, total: number): void;
  done(message?: string): void;
}

const CLEAR_EOL = '\x1b[K';

/**
 * One progress line for a terminal `width` columns wide: `label [#####.....]  42% 1.2 MiB/2.9 MiB`.
 * The bar takes what room is left (10 to 30 cells); narrower, the byte counts go first, then the bar,
 * then the label is shortened: the line never wraps, so the next `\r` redraw overwrites it whole.
 */
export function progressLine(label: string, done: number, total: number, width?: number): string {
  const frac = total > 0 ? Math.min(1, done / total) : 1;
  const pct = `${(frac * 100).toFixed(0).padStart(3)}%`;
  const bytes = ` ${formatBytes(done)}/${formatBytes(total)}`;
  const bar = (cells: number) => {
    const fill = Math.round(frac * cells);
    return ` [${'#'.repeat(fill)}${'.'.repeat(cells - fill)}] `;
  };
  const max = width ?? Infinity;
  const fixed = label.length + 4 + pct.length; // " [" + "] " around the bar
  for (const tail of [bytes, '']) {
    const cells = Math.min(30, max - fixed - tail.length);
    if (cells >= 10) return `${label}${bar(cells)}${pct}${tail}`;
  }
  // Too narrow for a bar beside the whole label: shorten the label, keep a small bar and the percentage.
  return fitLine(`${fitLine(label, Math.max(1, max - 14 - pct.length))}${bar(10)}${pct}`, width);
}

export function progressBar(label: string, opts: { quiet?: boolean; stream?: NodeJS.WriteStream } = {}): Progress {
  const out = opts.stream ?? process.stderr;
  if (opts.quiet) return { update() {}, done() {} };
  const tty = Boolean(out.isTTY);
  let lastDecile = -1;
  let drawn = false;
  const started = Date.now();
  return {
    update(done, total) {
      if (tty) {
        // Width read at every draw: a resized terminal gets lines that fit it from then on.
        out.write(`\r${progressLine(label, done, total, terminalWidth(out))}${CLEAR_EOL}`);
        drawn = true;
      } else {
        const frac = total > 0 ? Math.min(1, done / total) : 1;
        const decile = Math.floor(frac * 10);
        if (decile !== lastDecile) {
          lastDecile = decile;
          out.write(`${label}: ${decile * 10}% (${formatBytes(done)}/${formatBytes(total)})\n`);
        }
      }
    },
    done(message) {
      const secs = ((Date.now() - started) / 1000).toFixed(1);
      if (tty && drawn) out.write(`\r${CLEAR_EOL}`);
      out.write(`${fitLine(`${label}: ${message ?? 'done'} in ${secs}s`, tty ? terminalWidth(out) : undefined)}\n`);
    },
  };
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(2)} MiB`;
}
