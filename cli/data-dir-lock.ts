import fs from 'node:fs';
import path from 'node:path';
import { fileProblem } from './key-files.js';

/**
 * One process per data dir and role: two agents on the same SQLite state (or two brokers on the same
 * retained store) would each believe they own every node. The lock is a file `<role>.lock` holding
 * who took it; it is created atomically (a hard link of a complete file, which fails if the name
 * exists, so no reader ever sees a half-written lock) and removed when the process exits.
 *
 * A lock left by a process that died (kill -9, power cut) is stale and is taken over: its pid is
 * gone, or a zombie, or belongs to a later process (the start time differs), or the machine has
 * rebooted since (the boot id differs: pids repeat from boot to boot on a small device).
 */
export interface LockHolder {
  pid: number;
  command?: string;
  /** /proc/sys/kernel/random/boot_id when the lock was taken (Linux). */
  boot?: string;
  /** Start time of the process in clock ticks since boot, /proc/PID/stat field 22 (Linux). */
  start?: string;
}

export interface DataDirLock {
  file: string;
  /** The pid whose stale lock this one replaced, if any. */
  tookOverFrom?: number;
  release(): void;
}

/** Probes of the running system, passed in so the staleness rule can be tested on its own. */
export interface ProcessProbe {
  bootId(): string | undefined;
  /** undefined: no such process (or a zombie); otherwise its start time if known, else ''. */
  startTime(pid: number): string | undefined;
}

export const systemProbe: ProcessProbe = {
  bootId() {
    try {
      return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    } catch {
      return undefined;
    }
  },
  startTime(pid) {
    try {
      process.kill(pid, 0);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EPERM') return undefined; // EPERM: alive, another user's
    }
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (fields[0] === 'Z' || fields[0] === 'X') return undefined;
      return fields[19] ?? '';
    } catch {
      return '';
    }
  },
};

/** Whether the process that wrote `holder` is certainly gone. */
export function isStale(holder: LockHolder, probe: ProcessProbe = systemProbe): boolean {
  if (!Number.isInteger(holder.pid) || holder.pid <= 0) return true;
  const boot = probe.bootId();
  if (holder.boot && boot && holder.boot !== boot) return true;
  const start = probe.startTime(holder.pid);
  if (start === undefined) return true;
  return Boolean(holder.start && start && holder.start !== start);
}

export function describeHolder(dir: string, h: LockHolder): string {
  return `data dir ${dir} is in use by pid ${h.pid}${h.command ? ` (ferry ${h.command})` : ''}`;
}

/** Takes `<dir>/<role>.lock` for this process, or throws `data dir D is in use by pid N`. */
export function lockDataDir(dir: string, role: string, command: string, probe: ProcessProbe = systemProbe): DataDirLock {
  try {
    return takeLock(dir, role, command, probe);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === undefined) throw err;
    throw new Error(`data dir ${dir}: ${fileProblem(err)}`);
  }
}

function takeLock(dir: string, role: string, command: string, probe: ProcessProbe): DataDirLock {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${role}.lock`);
  const me: LockHolder = { pid: process.pid, command, boot: probe.bootId(), start: probe.startTime(process.pid) || undefined };
  const mine = `${JSON.stringify(me)}\n`;
  let tookOverFrom: number | undefined;
  for (let attempt = 0; attempt < 8; attempt++) {
    if (createExclusive(file, mine)) return held(file, mine, tookOverFrom);
    const raw = readOrUndefined(file);
    if (raw === undefined) continue; // released between our try and our read
    const holder = parseHolder(raw);
    if (!isStale(holder, probe)) throw new Error(describeHolder(dir, holder));
    // Take over: move the stale file aside. Two processes may both find it stale; the one whose rename
    // moved a lock that is no longer the stale one (the other just took it) puts it back and reports.
    const aside = `${file}.stale.${process.pid}`;
    try {
      fs.renameSync(file, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    const moved = readOrUndefined(aside);
    if (moved !== raw) {
      try {
        fs.linkSync(aside, file);
      } catch {
        /* yet another process holds it now: the next round reports whoever it is */
      }
    } else {
      tookOverFrom = holder.pid;
    }
    fs.rmSync(aside, { force: true });
  }
  throw new Error(`cannot lock data dir ${dir}: ${file} keeps changing hands`);
}

function held(file: string, mine: string, tookOverFrom: number | undefined): DataDirLock {
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    process.off('exit', release);
    // Only our own lock: a lock file someone replaced by hand is theirs.
    if (readOrUndefined(file) === mine) fs.rmSync(file, { force: true });
  };
  process.on('exit', release);
  return { file, tookOverFrom, release };
}

/** Creates `file` with `content`, atomically and only if it does not exist; false if it exists. */
function createExclusive(file: string, content: string): boolean {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, content);
  try {
    fs.linkSync(tmp, file);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'ENOSYS') throw err;
    // A file system without hard links (FAT): O_EXCL, at the price of a moment where the file is empty.
    try {
      fs.writeFileSync(file, content, { flag: 'wx' });
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw e;
    }
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

function readOrUndefined(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

function parseHolder(raw: string): LockHolder {
  try {
    const v = JSON.parse(raw) as Partial<LockHolder>;
    return { pid: Number(v.pid), command: typeof v.command === 'string' ? v.command : undefined, boot: v.boot, start: v.start };
  } catch {
    // A bare pid (written by hand or by a script) counts too; anything else is stale.
    return { pid: /^\s*\d+\s*$/.test(raw) ? Number(raw) : NaN };
  }
}
