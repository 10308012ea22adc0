import t from 'tap';
import type { NodeStatus } from '../agent/status.js';
import { nodeProgressLine } from '../cli/demo.js';
import { progressLine } from '../cli/progress.js';
import { localTime, statusTable, totalsLines, zoneName, type StatusDoc } from '../cli/status-table.js';
import { paint, statusFrame } from '../cli/status-watch.js';
import { VtScreen } from './helpers/vt-screen.js';

// The terminal renderers are pure functions of (state, columns): checked here at 80 and 50 columns
// through a terminal model, so "fits" means no line wrapped and nothing stale left on screen.

const NOW = new Date('2026-12-03T10:00:00Z');
const STATES = ['downloading', 'confirmed', 'rolledBack', 'queued', 'verifying', 'timedOut'];

function node(i: number, over: Partial<StatusDoc> = {}): StatusDoc {
  const state = STATES[i % STATES.length];
  return {
    id: i % 7 === 0 ? `greenhouse-sensor-with-a-long-name-${i}` : `node-${i}`, agent: i % 2 ? 'gateway-agent' : 'hall-agent-2', hw: 'esp32-devkitc', state,
    runningVersion: '1.0.0', targetVersion: '1.1.0', digest: '7aac4ec3', received: (i * 37) % 400, total: 400, bytes: 0, payload: i % 3 ? 'full' : 'delta', progress: 0.5,
    acks: 1, attempts: 1, retransmits: i, reason: state === 'rolledBack' ? 'selfTestFailed' : state === 'timedOut' ? 'timeout' : null, detail: '', imageState: 'valid', slot: 0,
    lastSeen: new Date(NOW.getTime() - i * 60_000).toISOString(), online: i % 5 !== 0, warnings: i === 3 ? ['bootloader cannot roll back: a bad image would stay installed'] : [], rollout: i % 2 ? 'r1' : null, wave: i % 3,
    ...over,
  } as StatusDoc;
}

t.test('the status table fits 80 and 50 columns, keeping the columns that matter most', async (t) => {
  const rows = Array.from({ length: 30 }, (_, i) => node(i + 1));
  for (const width of [80, 50]) {
    const lines = statusTable(rows, { width: width - 1, now: NOW, timeZone: 'UTC' });
    t.ok(lines.every((l) => l.length <= width - 1), `${width} columns: every line fits (widest ${Math.max(...lines.map((l) => l.length))})`);
    t.match(lines[0], /^NODE\s+ON\s+STATE\s+.*PROGRESS/, `${width} columns: NODE, ON, STATE and PROGRESS stay`);
    const screen = new VtScreen(60, width);
    screen.write(lines.join('\r\n'));
    t.equal(screen.wraps, 0, `${width} columns: nothing wrapped on a terminal`);
  }
  const wide = statusTable(rows, { now: NOW, timeZone: 'UTC' });
  t.match(wide[0], /NODE\s+ON\s+AGENT\s+HW\s+STATE\s+RUNNING\s+TARGET\s+DIGEST\s+PROGRESS\s+ATT\s+RETX\s+REASON\s+SEEN UTC/, 'unbounded (a pipe): every column');
  t.match(statusTable(rows, { width: 79, now: NOW, timeZone: 'UTC' })[0], /REASON/, '80 columns still show the reason');
  t.match(statusTable(rows, { now: NOW, rollout: true })[0], /WAVE/, 'a rollout view adds WAVE');
  t.match(wide.find((l) => l.startsWith('node-1 '))!, /7aac4ec3/, 'the digest prefix');
  t.match(wide.find((l) => l.startsWith('node-3 '))!, /delta/, 'a delta session says so');
  t.ok(wide.some((l) => /^warning: node-3: bootloader cannot roll back/.test(l)), 'warnings under the table');
});

t.test('times are local, with the zone named', async (t) => {
  t.equal(localTime(new Date('2026-12-03T09:30:05Z'), NOW, 'Asia/Kolkata'), '15:00:05', 'today: the time of day in that zone');
  t.equal(localTime(new Date('2026-12-01T09:30:05Z'), NOW, 'Asia/Kolkata'), '12-01 15:00', 'another day: the date too');
  t.match(zoneName(NOW, 'Asia/Kolkata'), /GMT\+5:30|IST/, 'the zone');
  t.match(statusTable([node(1)], { now: NOW, timeZone: 'Europe/Berlin' })[0], /SEEN (GMT\+1|CET)/, 'in the header');
});

t.test('totals per state, wrapped at spaces to the width', async (t) => {
  const rows = Array.from({ length: 30 }, (_, i) => node(i + 1));
  const [line] = totalsLines(rows);
  t.match(line, /^30 nodes \(24 online\): 5 confirmed, 5 downloading, 5 queued, 5 rolledBack, 5 timedOut, 5 verifying$/, line);
  const narrow = totalsLines(rows, 40);
  t.ok(narrow.length > 1 && narrow.every((l) => l.length <= 40), 'wrapped at 40 columns');
  t.equal(narrow.join(' '), line, 'without losing a word');
});

t.test('--watch frames: in place, no wrapped or stale lines, never taller than the terminal', async (t) => {
  for (const [cols, rowsOnScreen] of [[80, 24], [50, 20]]) {
    const screen = new VtScreen(rowsOnScreen, cols);
    const frame = (rows: StatusDoc[]) => statusFrame(rows, { width: cols - 1, height: rowsOnScreen, now: NOW, timeZone: 'UTC', title: 'ferry status mqtt://gateway.example:1883' });
    const many = Array.from({ length: 40 }, (_, i) => node(i + 1));
    screen.write('\x1b[2J');
    screen.write(paint(frame(many)));
    t.match(screen.text().join('\n'), /… \d+ more lines/, `${cols}×${rowsOnScreen}: what does not fit is counted`);
    // Fewer nodes, shorter cells: the old frame must be gone entirely.
    const few = [node(2, { state: 'confirmed', reason: null }), node(4, { state: 'confirmed', reason: null })];
    const expected = frame(few);
    screen.write(paint(expected));
    t.same(screen.text().slice(0, expected.length), expected, `${cols}×${rowsOnScreen}: the screen shows exactly the new frame`);
    t.ok(screen.text().slice(expected.length).every((l) => l === ''), `${cols}×${rowsOnScreen}: nothing below it`);
    t.equal(screen.wraps, 0, `${cols}×${rowsOnScreen}: no line wrapped`);
    t.equal(screen.scrolled, 0, `${cols}×${rowsOnScreen}: the screen never scrolled`);
    t.same(screen.unknown, [], 'only sequences the model knows');
  }
});

t.test('progress bars fit 80 and 50 columns and leave nothing stale when redrawn', async (t) => {
  for (const width of [80, 50, 30]) {
    const screen = new VtScreen(5, width);
    for (const [done, total] of [[0, 3_000_000], [1_500_000, 3_000_000], [3_000_000, 3_000_000]]) {
      const line = progressLine('publishing esp32-devkitc 1.10.0-rc.1', done, total, width - 1);
      t.ok(line.length <= width - 1, `${width} columns, ${done}/${total}: ${line}`);
      screen.write(`\r${line}\x1b[K`);
    }
    t.equal(screen.wraps, 0, `${width} columns: no wrap`);
    t.match(screen.text()[0], /100%/, `${width} columns: the last draw is what shows`);
    t.notMatch(screen.text()[0], / 50%/, `${width} columns: nothing of the earlier draw`);
  }
  t.match(progressLine('diff', 512, 1024, 79), /^diff \[#{15}\.{15}\]  50% 512 B\/1\.0 KiB$/, 'wide: a 30-cell bar and the byte counts');
  t.match(progressLine('release  publishing 1.1.0', 5, 10, 49), /^release  publishing 1\.1\.0 \[[#.]+\]  50%/, '50 columns: the bar narrows, the label stays');
  const s = { id: 'node-12', state: 'rolledBack', reason: 'selfTestFailed', received: 40, total: 80, runningVersion: '1.0.0' } as NodeStatus;
  for (const width of [79, 49]) t.ok(nodeProgressLine(s, width).length <= width, `demo node line at ${width + 1} columns: ${nodeProgressLine(s, width)}`);
});
