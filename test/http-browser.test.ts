import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { startHttpGateway } from './helpers/http-gateway.js';
import { untilStatus } from './helpers/world.js';
import type { RolloutView } from '../agent/http/rollout-shape.js';

/**
 * The status page in a real headless Chromium (Debian's, driven by playwright-core) against a real
 * broker + agent + simulated nodes: the page loads under its strict CSP without errors, shows the
 * fleet, updates live while a signed release really rolls out (no reload), shows the rollback with
 * its reason, renders hostile text as text, and a screenshot of it is taken and checked.
 */
const CHROMIUM = '/usr/bin/chromium';
const NODES = 10;

if (!fs.existsSync(CHROMIUM)) {
  t.comment(`skipped: ${CHROMIUM} is missing (apt-get install chromium; CI installs it from .ci/packages.txt)`);
  t.pass('skipped: no chromium');
} else {
  t.test('status page in headless Chromium: loads, updates live during a real update, screenshot shows the rows', async (t) => {
    const { chromium } = await import('playwright-core');
    const g = await startHttpGateway({ nodes: NODES, failSelfTest: 1, live: { flushMs: 100 } });
    t.teardown(() => g.close());
    for (let i = 1; i <= NODES; i++) await untilStatus(g.agent, `node-${i}`, () => true, 'hello');
    // Stand-in for the rollout engine (agent.rollouts(), fixed interface 2 of the plan): its ids and
    // details are hostile input like any node's.
    const hostile = '<img src=x onerror="window.__pwned=1">';
    const rollout: RolloutView = {
      id: `r1${hostile}`, hw: 'esp32-devkitc', version: '1.1.0', state: 'running', reason: null, currentWave: 1,
      waves: [
        { index: 0, target: 1, nodes: 1, confirmed: 1, failed: 0, inProgress: 0, state: 'done' },
        { index: 1, target: 5, nodes: 5, confirmed: 0, failed: 0, inProgress: 5, state: 'running' },
      ],
      failures: [{ device: 'node-6', outcome: 'rolledBack', reason: 'selfTestFailed', detail: `<script>window.__pwned=2</script>${hostile}` }],
    };
    Object.assign(g.agent, { rollouts: () => [rollout] });

    const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-chromium-'));
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 900 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    t.teardown(async () => {
      await context.close();
      fs.rmSync(profile, { recursive: true, force: true });
    });
    const page = context.pages()[0] ?? (await context.newPage());
    const problems: string[] = [];
    page.on('console', (m) => (m.type() === 'error' || m.type() === 'warning') && problems.push(`console ${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    const requests: string[] = [];
    page.on('request', (r) => requests.push(r.url()));

    await page.goto(`${g.http.url}/`);
    await page.waitForSelector('body[data-live="yes"]');
    await page.waitForFunction((n) => document.querySelectorAll('#fleet tbody tr[data-state="idle"]').length === n, NODES);
    t.same(await page.$$eval('#fleet tbody tr', (rows) => rows.map((r) => (r as HTMLElement).dataset.id)), Array.from({ length: NODES }, (_, i) => `node-${i + 1}`), 'one row per node, in order');
    t.equal(await page.textContent('#rollouts .rollout h3 span'), `r1${hostile}`, 'a hostile rollout id shows as text');
    t.equal(await page.$$eval('img, #rollouts script', (e) => e.length), 0, 'and makes no element');
    t.equal(await page.$$eval('#rollouts tr[data-wave]', (rows) => rows.length), 2, 'both waves shown');

    // Watch every row's state from now on, in the page itself; a reload would lose the marker.
    await page.evaluate(() => {
      const w = window as unknown as { __seen: Record<string, string[]>; __marker: number };
      w.__marker = 42;
      w.__seen = {};
      const note = (tr: HTMLElement) => {
        const id = tr.dataset.id!;
        const list = (w.__seen[id] ??= []);
        if (list[list.length - 1] !== tr.dataset.state) list.push(tr.dataset.state!);
      };
      const body = document.querySelector('#fleet tbody')!;
      body.querySelectorAll('tr').forEach((tr) => note(tr as HTMLElement));
      new MutationObserver((records) => {
        for (const r of records) {
          const tr = (r.target as HTMLElement).closest('tr');
          if (tr) note(tr as HTMLElement);
        }
      }).observe(body, { subtree: true, attributes: true, attributeFilter: ['data-state'], childList: true });
    });

    await g.publish('1.1.0', 192 * 1024);
    await page.waitForFunction((n) => document.querySelectorAll('#fleet tbody tr[data-state="confirmed"]').length === n - 1, NODES, { timeout: 90_000 });
    await page.waitForSelector('#fleet tbody tr[data-id="node-10"][data-state="rolledBack"]', { timeout: 90_000 });
    const seen = await page.evaluate(() => {
      const w = window as unknown as { __seen: Record<string, string[]>; __marker: number };
      return { __seen: w.__seen, __marker: w.__marker };
    });
    t.equal(seen.__marker, 42, 'the page was never reloaded');
    for (let i = 1; i < NODES; i++) {
      const states = seen.__seen[`node-${i}`];
      t.equal(states[0], 'idle', `node-${i} started idle`);
      t.equal(states[states.length - 1], 'confirmed', `node-${i} moved to confirmed live`);
    }
    const between = Object.values(seen.__seen).flat().filter((s) => s !== 'idle' && s !== 'confirmed' && s !== 'rolledBack');
    t.ok(between.length > 0, `rows went through the update's states on the way (${[...new Set(between)].join(', ')})`);
    t.same(await page.$$eval('#fleet tbody tr[data-state="confirmed"] td:nth-child(4)', (c) => c.map((e) => e.textContent)), Array(NODES - 1).fill('1.1.0'), 'confirmed rows show the new running version');
    t.same(
      await page.$$eval('#failures tbody tr', (rows) => rows.map((r) => [...r.querySelectorAll('td')].slice(0, 3).map((c) => c.textContent))),
      [['node-10', 'rolledBack', 'selfTestFailed']],
      'recent failures: node-10 rolled back, with the reason',
    );
    t.equal(await page.$eval('#fleet tbody tr[data-id="node-1"] progress', (p) => (p as HTMLProgressElement).value), 1, 'node-1 progress bar full');
    t.match(await page.textContent('#figures'), /relayed\d/, 'summary figures shown');
    t.equal(await page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned), undefined, 'no hostile script ran');
    t.same(problems, [], 'no console errors, CSP violations or page errors');
    t.ok(requests.every((u) => u.startsWith(g.http.url)), 'the page loads nothing from anywhere else');

    const shot = path.join(os.tmpdir(), `ferry-status-page-${process.pid}.png`);
    await page.screenshot({ path: shot, fullPage: true });
    t.teardown(() => fs.rmSync(shot, { force: true }));
    const png = fs.readFileSync(shot);
    t.ok(png.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])), 'a PNG');
    const width = png.readUInt32BE(16);
    const height = png.readUInt32BE(20);
    t.equal(width, 1280, 'as wide as the viewport');
    t.ok(png.length > 20_000, `not blank (${png.length} bytes)`);
    // Every fleet row lies inside the captured page, and reads as expected there.
    const boxes = await page.$$eval('#fleet tbody tr', (rows) => rows.map((r) => {
      const b = r.getBoundingClientRect();
      return { id: (r as HTMLElement).dataset.id, state: (r as HTMLElement).dataset.state, top: b.top + window.scrollY, bottom: b.bottom + window.scrollY, text: r.textContent };
    }));
    t.equal(boxes.length, NODES);
    for (const b of boxes) {
      t.ok(b.top >= 0 && b.bottom <= height && b.bottom > b.top, `${b.id} row is within the ${height}px screenshot`);
      t.match(b.text, b.id === 'node-10' ? /rolledBack.*selfTestFailed/ : /confirmed1\.1\.0/, `${b.id} row text`);
    }
    if (process.env.FERRY_KEEP_SCREENSHOT) fs.copyFileSync(shot, process.env.FERRY_KEEP_SCREENSHOT);
  });
}
