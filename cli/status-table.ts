import type { NodeStatus } from '../agent/status.js';
import { fitLine, wrapWords } from './text-fit.js';

/**
 * The status document as an operator tool reads it: fields other helpers' agents may add (rollout,
 * wave) or an older agent may lack (agent, digest) are optional here, absent meaning null.
 */
export type StatusDoc = Omit<NodeStatus, 'agent' | 'digest'> & { agent?: string; digest?: string | null; rollout?: string | null; wave?: number | null };

export interface TableOptions {
  /** Terminal width: columns are dropped (least useful first) and cells shortened until every line fits. Unbounded when absent. */
  width?: number;
  now: Date;
  /** IANA zone for times; the process's local zone when absent. */
  timeZone?: string;
  /** Show the WAVE column (a `--rollout` view). */
  rollout?: boolean;
}

interface Column {
  header: string;
  cell(s: StatusDoc, o: TableOptions): string;
  /** 0 is never dropped; higher numbers are dropped first when the table is too wide. */
  drop: number;
  /** Cells may be shortened (with …) down to this width before columns are dropped. */
  min?: number;
}

const COLUMNS: Column[] = [
  { header: 'NODE', cell: (s) => s.id, drop: 0, min: 8 },
  { header: 'ON', cell: (s) => (s.online ? 'yes' : 'no'), drop: 1 },
  { header: 'AGENT', cell: (s) => s.agent || '-', drop: 5, min: 6 },
  { header: 'HW', cell: (s) => s.hw, drop: 9, min: 6 },
  { header: 'STATE', cell: (s) => s.state, drop: 0 },
  { header: 'RUNNING', cell: (s) => s.runningVersion, drop: 4, min: 6 },
  { header: 'TARGET', cell: (s) => s.targetVersion ?? '-', drop: 3, min: 6 },
  { header: 'DIGEST', cell: (s) => s.digest ?? '-', drop: 8 },
  { header: 'WAVE', cell: (s) => (s.wave === null || s.wave === undefined ? '-' : String(s.wave)), drop: 6 },
  { header: 'PROGRESS', cell: progressCell, drop: 0 },
  { header: 'ATT', cell: (s) => String(s.attempts), drop: 11 },
  { header: 'RETX', cell: (s) => String(s.retransmits), drop: 10 },
  { header: 'REASON', cell: (s) => s.reason ?? '-', drop: 2, min: 8 },
  { header: 'LAST SEEN', cell: (s, o) => (s.lastSeen ? localTime(new Date(s.lastSeen), o.now, o.timeZone) : '-'), drop: 7 },
];

function progressCell(s: StatusDoc): string {
  // A delta session counts patch chunks: say so, so a small total does not read as a small image.
  if (!s.total) return s.state === 'confirmed' ? '100%' : '-';
  return `${Math.floor((100 * s.received) / s.total)}% ${s.received}/${s.total}${s.payload === 'delta' ? ' delta' : ''}`;
}

/** The table's lines: header, one per node, then warnings. Every line fits `width` when given. */
export function statusTable(rows: StatusDoc[], o: TableOptions): string[] {
  const cols = COLUMNS.filter((c) => c.header !== 'WAVE' || o.rollout).map((c) => (c.header === 'LAST SEEN' ? { ...c, header: `SEEN ${zoneName(o.now, o.timeZone)}` } : c));
  let cells = rows.map((s) => cols.map((c) => c.cell(s, o)));
  let widths = cols.map((c, i) => Math.max(c.header.length, ...cells.map((r) => r[i].length)));
  const total = (w: number[]) => w.reduce((a, b) => a + b, 0) + 2 * (w.length - 1);
  let keep = cols.map(() => true);
  if (o.width !== undefined) {
    const width = o.width;
    const shrinkable = () => cols.reduce((sum, c, i) => sum + (keep[i] && c.min !== undefined ? Math.max(0, widths[i] - Math.max(c.min, c.header.length)) : 0), 0);
    const used = () => total(widths.filter((_, i) => keep[i]));
    // Drop columns, least useful first, while shortening cells alone could not make the table fit.
    const order = cols.map((c, i) => i).filter((i) => cols[i].drop > 0).sort((a, b) => cols[b].drop - cols[a].drop);
    for (const i of order) {
      if (used() - shrinkable() <= width) break;
      keep[i] = false;
    }
    // Then shorten the widest shrinkable cells until it fits.
    let over = used() - width;
    while (over > 0) {
      let best = -1;
      for (let i = 0; i < cols.length; i++) {
        const c = cols[i];
        if (!keep[i] || c.min === undefined || widths[i] <= Math.max(c.min, c.header.length)) continue;
        if (best < 0 || widths[i] > widths[best]) best = i;
      }
      if (best < 0) break;
      widths[best]--;
      over--;
    }
  }
  const shown = cols.map((_, i) => i).filter((i) => keep[i]);
  const fmt = (r: string[]) => fitLine(shown.map((i) => fitLine(r[i], widths[i]).padEnd(widths[i])).join('  ').trimEnd(), o.width);
  const warnings = rows.flatMap((s) => s.warnings.map((w) => fitLine(`warning: ${s.id}: ${w}`, o.width)));
  return [fmt(cols.map((c) => c.header)), ...cells.map(fmt), ...warnings];
}

/** "12 nodes (10 online): 3 confirmed, 2 downloading, ..." wrapped to `width`. */
export function totalsLines(rows: StatusDoc[], width?: number): string[] {
  const counts = new Map<string, number>();
  for (const s of rows) counts.set(s.state, (counts.get(s.state) ?? 0) + 1);
  const states = [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([state, n]) => `${n} ${state}`);
  const online = rows.filter((s) => s.online).length;
  const text = `${rows.length} node${rows.length === 1 ? '' : 's'} (${online} online)${states.length ? `: ${states.join(', ')}` : ''}`;
  return wrapWords(text, width);
}

/** Time in the local (or given) zone: HH:MM:SS today, MM-DD HH:MM on another day. */
export function localTime(t: Date, now: Date, timeZone?: string): string {
  const fmt = new Intl.DateTimeFormat('sv-SE', { timeZone, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
  const [date, time] = fmt.format(t).split(' ');
  const [today] = fmt.format(now).split(' ');
  return date === today ? time : `${date.slice(5)} ${time.slice(0, 5)}`;
}

/** The zone's short name at `now` (CET, UTC, GMT+1): what the SEEN header says the times are in. */
export function zoneName(now: Date, timeZone?: string): string {
  const part = new Intl.DateTimeFormat('en-US', { timeZone, timeZoneName: 'short' }).formatToParts(now).find((p) => p.type === 'timeZoneName');
  return part?.value ?? 'local';
}
