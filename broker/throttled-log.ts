import type { LogFn } from './plugin.js';

/** A logger that says at most a few lines a second and counts what it held back: floods must not flood the log. */
export function throttled(log: LogFn | undefined, perSecond = 20): LogFn {
  if (!log) return () => {};
  let windowStart = 0;
  let said = 0;
  let held = 0;
  return (level, msg, fields) => {
    const now = Date.now();
    if (now - windowStart >= 1000) {
      if (held > 0) log('warn', `${held} similar messages not shown`);
      windowStart = now;
      said = 0;
      held = 0;
    }
    if (said++ < perSecond) log(level, msg, fields);
    else held++;
  };
}
