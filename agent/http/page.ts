import { PAGE_JS } from './page-script.js';

/**
 * The status page's HTML and CSS, served from memory (no build step, no files to find at run time).
 * The page holds no data: app.js fills it from `/api/status` and `/api/events`, with textContent
 * only, so nothing a node says can become markup. The CSP of agent/http/server.ts forbids inline
 * script and style, which is why the script and style are separate resources.
 */
export { PAGE_JS };

export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>ferry status</title>
<link rel="stylesheet" href="/app.css">
<script src="/app.js" defer></script>
</head>
<body data-live="no">
<header>
  <h1>ferry <span id="agent-name" class="muted"></span></h1>
  <span id="conn" class="conn down">connecting…</span>
</header>
<section id="summary" aria-label="summary">
  <dl id="figures"></dl>
  <div id="states" class="chips"></div>
</section>
<section aria-labelledby="rollouts-h">
  <h2 id="rollouts-h">Rollouts</h2>
  <div id="rollouts"><p class="muted">no rollouts</p></div>
</section>
<section aria-labelledby="failures-h">
  <h2 id="failures-h">Recent failures</h2>
  <div class="wide"><table id="failures"><thead><tr><th>device</th><th>outcome</th><th>reason</th><th>detail</th><th>version</th><th>at</th></tr></thead><tbody></tbody></table></div>
  <p id="no-failures" class="muted">none</p>
</section>
<section aria-labelledby="fleet-h">
  <h2 id="fleet-h">Fleet <span id="fleet-count" class="muted"></span></h2>
  <div class="wide"><table id="fleet"><thead><tr><th>device</th><th>hw</th><th>state</th><th>running</th><th>target</th><th>rollout</th><th>progress</th><th>online</th><th>last seen</th><th>detail</th></tr></thead><tbody></tbody></table></div>
</section>
<noscript><p>This page needs JavaScript; the same data is at <a href="/api/status">/api/status</a> and <a href="/metrics">/metrics</a>.</p></noscript>
</body>
</html>
`;

export const PAGE_CSS = `
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #c62828; --busy: #1565c0; --idle: #6b7280; --line: #8884; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 12px 20px; max-width: 1400px; }
header { display: flex; align-items: baseline; gap: 16px; }
h1 { font-size: 20px; margin: 4px 0; }
h2 { font-size: 16px; margin: 18px 0 6px; }
.muted { color: var(--idle); font-weight: normal; }
.conn { font-size: 12px; padding: 2px 8px; border-radius: 10px; color: #fff; }
.conn.up { background: var(--ok); }
.conn.down { background: var(--bad); }
dl#figures { display: flex; flex-wrap: wrap; gap: 4px 20px; margin: 6px 0; }
dl#figures div { display: flex; gap: 6px; }
dt { color: var(--idle); }
dd { margin: 0; font-variant-numeric: tabular-nums; }
.chips { display: flex; flex-wrap: wrap; gap: 6px; }
.chip, .state { display: inline-block; padding: 1px 8px; border-radius: 10px; border: 1px solid var(--line); font-size: 12px; white-space: nowrap; }
.s-confirmed, .s-done { border-color: var(--ok); color: var(--ok); }
.s-rolledBack, .s-rejected, .s-timedOut, .s-failed, .s-halted, .s-aborted { border-color: var(--bad); color: var(--bad); }
.s-offered, .s-downloading, .s-verifying, .s-activating, .s-confirming, .s-running, .s-queued { border-color: var(--busy); color: var(--busy); }
table { border-collapse: collapse; width: 100%; }
.wide { overflow-x: auto; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); vertical-align: middle; }
th { font-weight: 600; font-size: 12px; color: var(--idle); }
td.detail { max-width: 420px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
progress { width: 140px; height: 10px; vertical-align: middle; accent-color: var(--busy); }
tr[data-state="confirmed"] progress, tr[data-state="done"] progress { accent-color: var(--ok); }
tr[data-state="rolledBack"] progress, tr[data-state="rejected"] progress, tr[data-state="timedOut"] progress, tr[data-state="failed"] progress, tr[data-state="halted"] progress { accent-color: var(--bad); }
.pct { display: inline-block; width: 44px; text-align: right; font-variant-numeric: tabular-nums; font-size: 12px; }
.rollout { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; margin-bottom: 10px; }
.rollout h3 { font-size: 14px; margin: 0 0 6px; display: flex; gap: 10px; align-items: baseline; }
.reason { color: var(--bad); margin: 4px 0; }
.online-yes { color: var(--ok); }
.online-no { color: var(--idle); }
`;
