/**
 * The status page's script (served as /app.js). Plain browser JavaScript, no framework, no build.
 * Every value from the server is hostile input (device ids, versions, details, reasons): it reaches
 * the page through textContent, dataset and <progress>.value only, never as markup, and class
 * names are built only from a fixed list of states. Kept free of backticks and dollar-brace so it
 * can live in this String.raw literal unchanged.
 */
export const PAGE_JS = String.raw`'use strict';
(function () {
  var FAILED = ['rolledBack', 'rejected', 'timedOut', 'failed'];
  var STATES = ['idle', 'queued', 'offered', 'downloading', 'verifying', 'activating', 'deferred', 'confirming',
    'confirmed', 'rolledBack', 'rejected', 'timedOut', 'failed', 'cancelled', 'running', 'paused', 'halted', 'aborted', 'done', 'pending'];
  var nodes = new Map();
  var rows = new Map();
  var rollouts = [];
  var source = null;

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function stateClass(s) { return STATES.indexOf(s) >= 0 ? 's-' + s : ''; }
  function badge(s) { return el('span', 'state ' + stateClass(s), s); }
  function time(iso) {
    if (!iso) return '';
    var d = new Date(iso);
    return isNaN(d.getTime()) ? '' : d.toLocaleTimeString();
  }
  function bytes(n) {
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(1)) + ' ' + units[i];
  }
  var collator = new Intl.Collator(undefined, { numeric: true });
  function byId(a, b) { return collator.compare(a, b); }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }
  function bar(fraction) {
    var wrap = el('span');
    var p = document.createElement('progress');
    p.max = 1;
    p.value = Math.max(0, Math.min(1, Number(fraction) || 0));
    wrap.appendChild(p);
    wrap.appendChild(el('span', 'pct', Math.round(p.value * 100) + '%'));
    return wrap;
  }

  function renderSummary(s) {
    $('agent-name').textContent = s.agent ? '· agent ' + s.agent : '';
    var figures = [
      ['nodes', s.nodes], ['online', s.online], ['releases', s.releases], ['relayed', bytes(s.bytesRelayed)],
      ['chunks', s.chunksSent], ['retransmits', s.retransmits], ['acks', s.acks],
    ];
    if (s.brokerClients !== null && s.brokerClients !== undefined) figures.push(['broker clients', s.brokerClients]);
    if (s.authFailures !== null && s.authFailures !== undefined) figures.push(['auth failures', s.authFailures]);
    var dl = $('figures');
    clear(dl);
    figures.forEach(function (f) {
      var d = el('div');
      d.appendChild(el('dt', '', f[0]));
      var dd = el('dd', '', f[1]);
      dd.dataset.figure = f[0];
      d.appendChild(dd);
      dl.appendChild(d);
    });
    var chips = $('states');
    clear(chips);
    Object.keys(s.byState || {}).forEach(function (k) {
      if (!s.byState[k]) return;
      var c = el('span', 'chip ' + stateClass(k), k + ' ' + s.byState[k]);
      c.dataset.state = k;
      chips.appendChild(c);
    });
  }

  // Columns: device, hw, state, running, target, rollout, progress, online, last seen, detail.
  var COLUMNS = 10;
  function fillRow(tr, n) {
    tr.dataset.state = n.state;
    var cells = tr.children;
    cells[0].textContent = n.id;
    cells[1].textContent = n.hw;
    clear(cells[2]); cells[2].appendChild(badge(n.state));
    cells[3].textContent = n.runningVersion;
    cells[4].textContent = n.targetVersion || '';
    cells[5].textContent = typeof n.rollout === 'string' ? n.rollout + (typeof n.wave === 'number' ? ' · wave ' + n.wave : '') : '';
    clear(cells[6]); cells[6].appendChild(bar(n.progress));
    cells[7].textContent = n.online ? 'yes' : 'no';
    cells[7].className = n.online ? 'online-yes' : 'online-no';
    cells[8].textContent = time(n.lastSeen);
    var warnings = Array.isArray(n.warnings) ? n.warnings.filter(function (w) { return typeof w === 'string'; }) : [];
    var detail = (n.reason ? n.reason + ': ' : '') + (n.detail || '') + (warnings.length ? ' [' + warnings.join('; ') + ']' : '');
    cells[9].textContent = detail;
    cells[9].title = detail;
  }

  function upsertNode(n) {
    if (!n || typeof n.id !== 'string') return false;
    nodes.set(n.id, n);
    var tr = rows.get(n.id);
    var added = false;
    if (!tr) {
      tr = el('tr');
      tr.dataset.id = n.id;
      for (var i = 0; i < COLUMNS; i++) tr.appendChild(el('td', i === COLUMNS - 1 ? 'detail' : ''));
      rows.set(n.id, tr);
      added = true;
    }
    fillRow(tr, n);
    return added;
  }

  function placeRows() {
    var body = $('fleet').tBodies[0];
    Array.from(rows.keys()).sort(byId).forEach(function (id) { body.appendChild(rows.get(id)); });
    $('fleet-count').textContent = '(' + rows.size + ')';
  }

  function renderFailures() {
    var list = Array.from(nodes.values()).filter(function (n) { return FAILED.indexOf(n.state) >= 0; });
    list.sort(function (a, b) { return String(b.lastSeen || '').localeCompare(String(a.lastSeen || '')) || byId(a.id, b.id); });
    var body = $('failures').tBodies[0];
    clear(body);
    list.slice(0, 50).forEach(function (n) {
      var tr = el('tr');
      tr.dataset.id = n.id;
      tr.appendChild(el('td', '', n.id));
      var o = el('td'); o.appendChild(badge(n.state)); tr.appendChild(o);
      tr.appendChild(el('td', '', n.reason || ''));
      var d = el('td', 'detail', n.detail || ''); d.title = n.detail || ''; tr.appendChild(d);
      tr.appendChild(el('td', '', n.targetVersion || ''));
      tr.appendChild(el('td', '', time(n.lastSeen)));
      body.appendChild(tr);
    });
    $('no-failures').hidden = list.length > 0;
    $('failures').hidden = list.length === 0;
  }

  function renderRollouts() {
    var box = $('rollouts');
    clear(box);
    if (!rollouts.length) { box.appendChild(el('p', 'muted', 'no rollouts')); return; }
    rollouts.forEach(function (r) {
      var card = el('div', 'rollout');
      card.dataset.rollout = r.id;
      var h = el('h3');
      h.appendChild(el('span', '', r.id));
      h.appendChild(el('span', 'muted', r.hw + ' ' + r.version));
      h.appendChild(badge(r.state));
      card.appendChild(h);
      if (r.reason) card.appendChild(el('p', 'reason', r.reason));
      var t = el('table');
      var head = el('tr');
      ['wave', 'state', 'target', 'nodes', 'confirmed', 'failed', 'in progress', 'progress'].forEach(function (c) { head.appendChild(el('th', '', c)); });
      t.appendChild(el('thead')).appendChild(head);
      var tb = t.appendChild(el('tbody'));
      (r.waves || []).forEach(function (w) {
        var tr = el('tr');
        tr.dataset.wave = String(w.index);
        tr.dataset.state = w.state;
        tr.appendChild(el('td', '', w.index === 0 ? 'canary' : 'wave ' + w.index + (w.index === r.currentWave ? ' ◂' : '')));
        var s = el('td'); s.appendChild(badge(w.state)); tr.appendChild(s);
        [w.target, w.nodes, w.confirmed, w.failed, w.inProgress].forEach(function (v) { tr.appendChild(el('td', 'num', v)); });
        var p = el('td'); p.appendChild(bar(w.nodes ? w.confirmed / w.nodes : 0)); tr.appendChild(p);
        tb.appendChild(tr);
      });
      card.appendChild(t);
      if (r.failures && r.failures.length) {
        var ul = el('ul');
        r.failures.slice(0, 20).forEach(function (f) {
          ul.appendChild(el('li', '', f.device + ': ' + f.outcome + (f.reason ? ' (' + f.reason + ')' : '') + (f.detail ? ': ' + f.detail : '')));
        });
        card.appendChild(ul);
      }
      box.appendChild(card);
    });
  }

  function applySnapshot(s) {
    nodes.clear();
    rows.forEach(function (tr) { tr.remove(); });
    rows.clear();
    (s.nodes || []).forEach(upsertNode);
    placeRows();
    rollouts = s.rollouts || [];
    renderRollouts();
    renderFailures();
    if (s.summary) renderSummary(s.summary);
  }

  function applyNodes(list) {
    var added = false;
    list.forEach(function (n) { if (upsertNode(n)) added = true; });
    if (added) placeRows();
    renderFailures();
  }

  function setLive(up) {
    var c = $('conn');
    c.textContent = up ? 'live' : 'reconnecting…';
    c.className = 'conn ' + (up ? 'up' : 'down');
    document.body.dataset.live = up ? 'yes' : 'no';
  }

  function on(name, fn) {
    source.addEventListener(name, function (e) {
      var data;
      try { data = JSON.parse(e.data); } catch (err) { return; }
      fn(data);
    });
  }

  function connect() {
    source = new EventSource('/api/events');
    source.onopen = function () { setLive(true); };
    source.onerror = function () { setLive(false); };
    on('snapshot', applySnapshot);
    on('nodes', applyNodes);
    on('rollouts', function (r) { rollouts = r; renderRollouts(); });
    on('summary', renderSummary);
  }

  fetch('/api/status', { cache: 'no-store' })
    .then(function (r) { if (!r.ok) throw new Error('HTTP ' + r.status); return r.json(); })
    .then(applySnapshot)
    .catch(function () { setLive(false); })
    .then(connect);
})();
`;
