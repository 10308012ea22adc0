import t from 'tap';
import { ferryInPty, hasScript } from './helpers/pty.js';
import { VtScreen } from './helpers/vt-screen.js';

// `ferry demo` on a real pseudo-terminal 50 columns wide: its publish bar and its per-node progress
// block are redrawn in place; nothing may wrap (a wrapped line breaks the cursor-up redraw and leaves
// stale copies on screen).
t.test('ferry demo at 50 columns: no wrapped or stale lines', { skip: hasScript ? false : 'no util-linux script' }, async (t) => {
  const rows = 30;
  const run = await ferryInPty(['demo', '--devices', '3', '--fail-selftest', '1', '--image-size', '65536'], { cols: 50, rows });
  t.equal(run.code, 0, 'the demo ends as it should');
  const screen = new VtScreen(rows, 50);
  screen.write(run.out);
  const text = screen.text();
  t.equal(screen.wraps, 0, 'no line wrapped');
  t.equal(screen.scrolled, 0, 'everything is still on screen');
  t.same(screen.unknown, [], 'only known escape sequences');
  for (const id of ['node-1', 'node-2', 'node-3']) t.equal(text.filter((l) => l.startsWith(`${id} `)).length, 1, `${id}: one line, no stale copy`);
  t.match(text.find((l) => l.startsWith('node-3 ')), /100%\s+rolledBack/, 'the failing node ends rolled back');
  t.ok(text.some((l) => /^summary\s+2 confirmed, 1 rolled back/.test(l)), 'and the summary follows');
});
