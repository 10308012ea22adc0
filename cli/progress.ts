/**
 * Progress for long work on a terminal: a redrawn bar on a TTY, a line every 10 % otherwise (CI
 * logs, pipes), nothing at all when the caller asked for JSON.
 */
export interface Progress {
  update(done: number, total: number): void;
  done(message?: string): void;
}

export function progressBar(label: string, opts: { quiet?: boolean; stream?: NodeJS.WriteStream } = {}): Progress {
  const out = opts.stream ?? process.stderr;
  if (opts.quiet) return { update() {}, done() {} };
  const tty = Boolean(out.isTTY);
  let lastDecile = -1;
  const started = Date.now();
  return {
    update(done, total) {
      const frac = total > 0 ? Math.min(1, done / total) : 1;
      if (tty) {
        const width = 30;
        const fill = Math.round(frac * width);
        out.write(`\r${label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${formatBytes(done)}/${formatBytes(total)}`);
      } else {
        const decile = Math.floor(frac * 10);
        if (decile !== lastDecile) {
          lastDecile = decile;
          out.write(`${label}: ${decile * 10}% (${formatBytes(done)}/${formatBytes(total)})\n`);
        }
      }
    },
    done(message) {
      const secs = ((Date.now() - started) / 1000).toFixed(1);
      if (tty) out.write('\n');
      out.write(`${label}: ${message ?? 'done'} in ${secs}s\n`);
    },
  };
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(2)} MiB`;
}
