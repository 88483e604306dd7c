// nimbus dashboard: a single page over the management API (/v1), no dependencies.
//
// Safety rule: everything shown comes from the API and may come from a function (logs, error
// messages, payloads), so the DOM is built with createElement/textContent only — never
// innerHTML — and the page's Content-Security-Policy allows no inline script.
'use strict';

(() => {
  const BASE = '/dashboard';
  const SVG = 'http://www.w3.org/2000/svg';
  const main = document.getElementById('main');

  // ---------- DOM helpers ----------

  function add(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.setAttribute('class', v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    return el;
  }

  // h('div', {class: 'x'}, 'text', child, [more]): strings become text nodes.
  function h(tag, attrs, ...children) {
    return add(setAttrs(document.createElement(tag), attrs), children);
  }

  function svg(tag, attrs, ...children) {
    return add(setAttrs(document.createElementNS(SVG, tag), attrs), children);
  }

  function link(path, ...children) {
    return h('a', { href: BASE + path, 'data-link': true }, ...children);
  }

  function toast(message, bad) {
    const box = document.getElementById('toast');
    const m = h('div', { class: bad ? 'msg bad' : 'msg' }, message);
    box.appendChild(m);
    setTimeout(() => m.remove(), 5000);
  }

  // ---------- formatting ----------

  const fmtInt = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'));
  function fmtMs(ms) {
    if (ms === null || ms === undefined) return '–';
    if (ms < 1) return `${(ms * 1000).toFixed(0)} µs`;
    if (ms < 100) return `${ms.toFixed(ms < 10 ? 2 : 1)} ms`;
    if (ms < 10000) return `${ms.toFixed(0)} ms`;
    return `${(ms / 1000).toFixed(1)} s`;
  }
  const fmtPct = (r) => (r === null || r === undefined ? '–' : `${(r * 100).toFixed(r < 0.1 && r > 0 ? 1 : 0)} %`);
  function fmtTime(ms) {
    if (!ms) return '–';
    const d = new Date(ms);
    const pad = (n, w = 2) => String(n).padStart(w, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtClock(ms, span) {
    const d = new Date(ms);
    const pad = (n) => String(n).padStart(2, '0');
    if (span > 2 * 86400000) return `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}h`;
    return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }
  function fmtAgo(ms) {
    if (!ms) return '–';
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 60) return `${Math.floor(s)}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ago`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
    return `${Math.floor(s / 86400)}d ago`;
  }
  function fmtMoney(n, currency) {
    if (n === null || n === undefined) return '–';
    // Cents for ordinary amounts; three significant digits for per-request sized ones.
    const digits = n !== 0 && Math.abs(n) < 0.01 ? Math.min(10, 2 - Math.floor(Math.log10(Math.abs(n)))) : 2;
    try {
      return new Intl.NumberFormat('en-US', { style: 'currency', currency: currency || 'USD', minimumFractionDigits: digits, maximumFractionDigits: digits }).format(n);
    } catch (_) {
      return `${n.toFixed(digits)} ${currency || ''}`.trim();
    }
  }

  function statusBadge(status) {
    const cls = status === 'success' || status === 'succeeded' ? 'ok'
      : status === 'throttled' || status === 'queued' || status === 'running' ? 'warn' : 'bad';
    return h('span', { class: `badge ${cls}`, 'data-status': status }, status);
  }

  // ---------- API ----------

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, options) {
    const opts = Object.assign({ credentials: 'same-origin', headers: {} }, options || {});
    if (opts.body !== undefined && typeof opts.body !== 'string') {
      opts.body = JSON.stringify(opts.body);
      opts.headers['content-type'] = 'application/json';
    }
    const r = await fetch('/v1' + path, opts);
    if (r.status === 401) {
      window.location.assign(BASE + '/login');
      throw new ApiError(401, 'signed out');
    }
    let body = null;
    try { body = await r.json(); } catch (_) { /* not JSON */ }
    if (!r.ok) throw new ApiError(r.status, (body && body.error) || `${r.status} ${r.statusText}`);
    return body;
  }

  function errorBox(e) {
    return h('div', { class: 'error-box', role: 'alert' }, e && e.message ? e.message : String(e));
  }

  // ---------- charts (SVG) ----------

  // chart({title, buckets, series: [{key, label}], kind: 'bar'|'line', format, max}) draws one
  // series per key over the buckets' startMs. Each drawn value is a `.pt` element.
  function chart(spec) {
    const [W, H, L] = spec.wide ? [1120, 220, 84] : [400, 200, 50];
    const R = 8, T = 10, B = 22;
    const buckets = spec.buckets || [];
    const n = buckets.length;
    const values = [];
    for (const s of spec.series) for (const b of buckets) if (b[s.key] !== null && b[s.key] !== undefined) values.push(b[s.key]);
    let max = Math.max(spec.max || 0, ...values, 0);
    if (max === 0) max = spec.max || 1;
    const nice = niceMax(max);
    const x0 = buckets.length ? buckets[0].startMs : 0;
    const step = n > 1 ? buckets[1].startMs - buckets[0].startMs : 1;
    const span = step * n;
    const xOf = (i) => L + ((W - L - R) * (i + 0.5)) / Math.max(n, 1);
    const yOf = (v) => T + (H - T - B) * (1 - v / nice);
    const root = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': spec.title, 'data-chart': spec.id || spec.title });
    for (let g = 0; g <= 4; g++) {
      const v = (nice * g) / 4;
      const y = yOf(v);
      root.appendChild(svg('line', { class: 'grid-line', x1: L, x2: W - R, y1: y, y2: y }));
      root.appendChild(svg('text', { class: 'axis-label', x: L - 6, y: y + 3, 'text-anchor': 'end' }, spec.format(v, true)));
    }
    if (n > 0) {
      // Bucket start times at the left edge, the middle and the right edge (anchored inwards).
      const ticks = [[0, 'start', L], [Math.floor(n / 2), 'middle', null], [n - 1, 'end', W - R]];
      for (const [i, anchor, x] of n > 2 ? ticks : ticks.slice(0, 1)) {
        root.appendChild(svg('text', { class: 'axis-label', x: x === null ? xOf(i) : x, y: H - 6, 'text-anchor': anchor }, fmtClock(x0 + step * i, span)));
      }
    }
    let points = 0;
    spec.series.forEach((s, si) => {
      const cls = `series-${si}`;
      if (spec.kind === 'bar') {
        const slot = (W - L - R) / Math.max(n, 1);
        const bw = Math.max(1, (slot * 0.8) / spec.series.length);
        buckets.forEach((b, i) => {
          const v = b[s.key];
          if (!v) return;
          points++;
          const x = xOf(i) - (slot * 0.8) / 2 + bw * si;
          root.appendChild(svg('rect', { class: `pt ${cls}`, x, y: yOf(v), width: bw, height: Math.max(0.5, yOf(0) - yOf(v)) },
            svg('title', {}, `${fmtTime(b.startMs)} · ${s.label}: ${spec.format(v)}`)));
        });
      } else {
        let d = '';
        buckets.forEach((b, i) => {
          const v = b[s.key];
          if (v === null || v === undefined) { d += ' '; return; }
          d += `${d.endsWith(' ') || d === '' ? 'M' : 'L'}${xOf(i).toFixed(1)},${yOf(v).toFixed(1)}`;
        });
        const path = d.trim().split(' ').filter(Boolean).join(' ');
        if (path) root.appendChild(svg('path', { class: `line ${cls}`, d: path }));
        buckets.forEach((b, i) => {
          const v = b[s.key];
          if (v === null || v === undefined) return;
          points++;
          root.appendChild(svg('circle', { class: `pt ${cls}`, cx: xOf(i), cy: yOf(v), r: 2.6 },
            svg('title', {}, `${fmtTime(b.startMs)} · ${s.label}: ${spec.format(v)}`)));
        });
      }
    });
    if (points === 0) {
      root.appendChild(svg('text', { class: 'empty-label', x: (L + W) / 2, y: H / 2, 'text-anchor': 'middle' }, 'no invocations in this window'));
    }
    root.setAttribute('data-points', String(points));
    const legend = h('div', { class: 'legend' }, spec.series.map((s, si) => h('span', {}, h('i', { class: `l-${si}` }), s.label)));
    return h('div', { class: 'card' }, h('div', { class: 'chart-head' }, h('h2', {}, spec.title), legend), root);
  }

  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  const countFmt = (v, axis) => (axis && v !== Math.round(v) ? '' : fmtInt(v));
  const msFmt = (v) => (v === 0 ? '0' : fmtMs(v));
  const pctFmt = (v) => `${Math.round(v * 100)}%`;

  function functionCharts(stats, id) {
    return h('div', { class: 'grid', id: id || 'charts' },
      chart({ id: 'invocations', title: 'Invocations and errors', kind: 'bar', buckets: stats.buckets, format: countFmt,
        series: [{ key: 'invocations', label: 'invocations' }, { key: 'errors', label: 'errors' }] }),
      chart({ id: 'latency', title: 'Latency (p50 / p99)', kind: 'line', buckets: stats.buckets, format: msFmt,
        series: [{ key: 'p50Ms', label: 'p50' }, { key: 'p99Ms', label: 'p99' }] }),
      chart({ id: 'cold', title: 'Cold-start rate', kind: 'line', buckets: stats.buckets, format: pctFmt, max: 1,
        series: [{ key: 'coldRate', label: 'cold starts' }] }));
  }

  // ---------- header ----------

  async function refreshHeader() {
    try {
      const app = await api('/app');
      const el = document.getElementById('app-name');
      el.textContent = app.app ? `${app.app} · version ${app.live}` : 'no deployment yet';
    } catch (_) { /* the page shows its own errors */ }
  }

  // ---------- pages ----------

  function head(title, ...rest) {
    return h('div', { class: 'page-head' }, h('h1', {}, title), ...rest);
  }

  function tile(k, v, cls, id) {
    return h('div', { class: 'tile', id }, h('div', { class: 'k' }, k), h('div', { class: `v ${cls || ''}` }, v));
  }

  async function pageDeployments() {
    const [app, stats, queue, dlq, traffic] = await Promise.all([
      api('/app'), api('/stats?window=1h&buckets=1'), api('/queue'), api('/dlq?limit=1000'),
      api('/aliases/live/traffic'),
    ]);
    const t = stats.total;
    const tiles = h('div', { class: 'tiles' },
      tile('Live version', app.live === null ? '–' : `v${app.live}`, '', 'tile-live'),
      tile('Invocations · 1h', fmtInt(t.invocations)),
      tile('Errors · 1h', fmtInt(t.errors), t.errors ? 'bad' : ''),
      tile('p99 · 1h', fmtMs(t.p99Ms)),
      tile('Queued events', fmtInt(queue.depth)),
      tile('Dead letters', fmtInt(dlq.length), dlq.length ? 'bad' : ''));
    const rows = app.deployments.map((d) => {
      let action = null;
      if (!d.live) {
        const label = app.live !== null && d.version < app.live ? `Roll back to v${d.version}` : `Make v${d.version} live`;
        action = h('button', { class: 'secondary', 'data-rollback': d.version, onclick: (e) => rollback(e.currentTarget, d.version) }, label);
      }
      return h('tr', { 'data-version': d.version },
        h('td', {}, h('strong', {}, `v${d.version}`)),
        h('td', {}, d.live ? h('span', { class: 'badge live' }, 'live') : null),
        h('td', {}, fmtTime(d.createdMs), h('div', { class: 'muted' }, fmtAgo(d.createdMs))),
        h('td', {}, d.functions.join(', ')),
        h('td', { class: 'num' }, action));
    });
    return [
      head(app.app || 'No deployment yet', h('span', { class: 'muted' }, 'app')),
      tiles,
      trafficCard(traffic),
      h('div', { class: 'card' }, h('h2', {}, 'Deployments'),
        h('table', { id: 'deployments' },
          h('thead', {}, h('tr', {}, h('th', {}, 'Version'), h('th', {}, ''), h('th', {}, 'Created'), h('th', {}, 'Functions'), h('th', {}, ''))),
          h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 5, class: 'empty' }, 'No deployments yet'))))),
    ];
  }

  // The live alias's split and its canary: running, or how the last one ended.
  function trafficCard(t) {
    const split = Object.entries(t.weights).map(([v, p]) => `v${v} ${p}%`).join(' · ');
    const lines = [h('p', { id: 'traffic-split' }, split || '–')];
    if (t.canary) {
      const c = t.canary;
      lines.push(h('p', { id: 'canary' }, `Canary: v${c.newVersion} at ${c.percent}% (from v${c.oldVersion}), started ${fmtAgo(c.startedMs)}`));
    }
    if (t.lastCanary) {
      const e = t.lastCanary;
      const verb = e.promoted ? 'promoted' : 'rolled back';
      lines.push(h('p', { id: 'last-canary', class: e.promoted ? '' : 'bad' }, `Last canary: v${e.newVersion} ${verb} ${fmtAgo(e.atMs)}: ${e.reason}`));
    }
    return h('div', { class: 'card' }, h('h2', {}, 'Traffic'), ...lines);
  }

  async function rollback(button, version) {
    button.disabled = true;
    try {
      await api('/rollback', { method: 'POST', body: { version } });
      toast(`Version ${version} is live`);
      await render();
    } catch (e) {
      button.disabled = false;
      toast(`Rollback failed: ${e.message}`, true);
    }
  }

  function poolSummary(f) {
    let idle = 0, busy = 0, starting = 0, cold = 0, inFlight = 0, shared = false;
    for (const p of f.pools || []) {
      idle += p.idle || 0; busy += p.busy || 0; starting += p.starting || 0;
      cold += p.coldStarts || p.cold_starts || 0;
      inFlight += p.inFlight || 0;
      shared = shared || (p.concurrency || 1) > 1;
    }
    return { idle, busy, starting, cold, inFlight, shared };
  }

  // "2 busy · 1 idle", with the invocations in flight when an instance runs several at once.
  function instancesText(p) {
    return `${p.busy} busy${p.shared ? ` (${p.inFlight} in flight)` : ''} · ${p.idle} idle${p.starting ? ` · ${p.starting} starting` : ''}`;
  }

  // Every instance of the function's pools: its state and, with concurrency > 1, how many
  // invocations it runs now out of how many it may.
  function instanceTable(f) {
    const rows = (f.pools || []).flatMap((p) => (p.instances || []).map((i) => ({ ...i, version: p.version, concurrency: p.concurrency || 1 })));
    if (!rows.length) return h('div', { class: 'empty' }, 'No instance running');
    return h('table', { id: 'instances' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Instance'), h('th', {}, 'Version'), h('th', {}, 'State'), h('th', { class: 'num' }, 'PID'),
        h('th', { class: 'num' }, 'In flight'))),
      h('tbody', {}, rows.map((i) => h('tr', { 'data-instance': i.id },
        h('td', { class: 'mono' }, i.id), h('td', {}, i.version), h('td', {}, i.state),
        h('td', { class: 'num' }, i.pid == null ? '–' : String(i.pid)),
        h('td', { class: 'num', 'data-in-flight': String(i.inFlight || 0) },
          i.concurrency > 1 ? `${i.inFlight || 0} / ${i.concurrency}` : String(i.inFlight || 0))))));
  }

  async function pageFunctions() {
    const fns = await api('/functions');
    const stats = await Promise.all(fns.map((f) => api(`/stats?function=${encodeURIComponent(f.name)}&window=1h&buckets=1`)));
    const rows = fns.map((f, i) => {
      const t = stats[i].total;
      const p = poolSummary(f);
      return h('tr', { class: 'clickable', 'data-function': f.name, onclick: () => go(`/functions/${encodeURIComponent(f.name)}`) },
        h('td', {}, link(`/functions/${encodeURIComponent(f.name)}`, f.name)),
        h('td', {}, f.runtime), h('td', { class: 'num' }, `${f.memoryMb} MB`),
        h('td', { class: 'num' }, instancesText(p)),
        h('td', { class: 'num' }, fmtInt(t.invocations)),
        h('td', { class: 'num' }, t.errors ? h('span', { class: 'badge bad' }, fmtInt(t.errors)) : '0'),
        h('td', { class: 'num' }, fmtMs(t.p50Ms)), h('td', { class: 'num' }, fmtMs(t.p99Ms)),
        h('td', { class: 'num' }, fmtPct(t.coldRate)));
    });
    return [
      head('Functions', h('span', { class: 'muted' }, 'last hour')),
      h('div', { class: 'card' }, h('table', { id: 'functions' },
        h('thead', {}, h('tr', {}, ['Name', 'Runtime', 'Memory', 'Instances', 'Invocations', 'Errors', 'p50', 'p99', 'Cold starts']
          .map((c, i) => h('th', { class: i >= 2 ? 'num' : null }, c)))),
        h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 9, class: 'empty' }, 'No functions deployed'))))),
    ];
  }

  const WINDOWS = [['5m', 60], ['15m', 60], ['1h', 60], ['6h', 72], ['24h', 96], ['7d', 84]];

  async function pageFunction(name, params) {
    const win = WINDOWS.find((w) => w[0] === params.get('window')) || WINDOWS[2];
    const [fns, stats, recent] = await Promise.all([
      api('/functions'),
      api(`/stats?function=${encodeURIComponent(name)}&window=${win[0]}&buckets=${win[1]}`),
      api(`/invocations?function=${encodeURIComponent(name)}&limit=20`),
    ]);
    const f = fns.find((x) => x.name === name);
    const picker = h('select', { id: 'window', onchange: (e) => go(`/functions/${encodeURIComponent(name)}?window=${e.target.value}`) },
      WINDOWS.map(([w]) => h('option', { value: w, selected: w === win[0] }, `last ${w}`)));
    const t = stats.total;
    const p = f ? poolSummary(f) : null;
    const tiles = h('div', { class: 'tiles' },
      tile('Invocations', fmtInt(t.invocations), '', 'tile-invocations'),
      tile('Errors', fmtInt(t.errors), t.errors ? 'bad' : '', 'tile-errors'),
      tile('p50', fmtMs(t.p50Ms)), tile('p99', fmtMs(t.p99Ms)),
      tile('Cold starts', `${fmtInt(t.cold)} (${fmtPct(t.coldRate)})`, '', 'tile-cold'),
      p ? tile('Instances', `${p.busy + p.idle + p.starting}`) : null);
    const config = f ? h('div', { class: 'card' }, h('h2', {}, 'Configuration'), h('dl', { class: 'kv' },
      kv('Runtime', f.runtime), kv('Handler', f.handler || '–'), kv('Version', f.version), kv('Memory', `${f.memoryMb} MB`),
      kv('Timeout', fmtMs(f.timeoutMs)), kv('Instances', `min ${f.minInstances}, max ${f.maxInstances}`),
      kv('Keep-alive', fmtMs(f.keepAliveMs)), kv('Routes', (f.routes || []).join(', ') || '–'),
      kv('Code digest', h('span', { class: 'mono' }, String(f.codeDigest || '').slice(0, 16))))) : h('div', { class: 'note' }, `${name} is not in the live deployment.`);
    return [
      head(name, h('span', { class: 'muted' }, 'function'), h('span', { class: 'spacer' }), picker),
      tiles,
      functionCharts(stats),
      h('div', { class: 'split' }, config,
        h('div', { class: 'card' }, h('h2', {}, 'Recent invocations'), invocationTable(recent, false))),
      f ? h('div', { class: 'card' }, h('h2', {}, 'Instances'), instanceTable(f)) : null,
    ];
  }

  function kv(k, v) {
    return [h('dt', {}, k), h('dd', {}, v)];
  }

  function invocationTable(rows, withFunction) {
    if (!rows.length) return h('div', { class: 'empty' }, 'No invocations yet');
    // In a cluster every record says the node that ran it.
    const nodes = rows.some((r) => r.node);
    return h('table', { class: 'invocations' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Started'), withFunction ? h('th', {}, 'Function') : null, h('th', {}, 'Status'),
        h('th', { class: 'num' }, 'Duration'), h('th', {}, ''), h('th', {}, 'Trigger'), h('th', {}, 'Request id'),
        nodes ? h('th', {}, 'Node') : null)),
      h('tbody', {}, rows.map((r) => h('tr', { class: 'clickable', 'data-request-id': r.requestId, onclick: () => go(`/invocations/${encodeURIComponent(r.requestId)}`) },
        h('td', { class: 'nowrap', title: fmtTime(r.startMs) }, withFunction ? fmtTime(r.startMs) : fmtTime(r.startMs).slice(11)),
        withFunction ? h('td', {}, r.function) : null,
        h('td', {}, statusBadge(r.status)),
        h('td', { class: 'num' }, fmtMs(r.durationMs)),
        h('td', {}, r.cold ? h('span', { class: 'badge cold' }, 'cold') : null),
        h('td', {}, r.trigger),
        h('td', { class: 'mono' }, link(`/invocations/${encodeURIComponent(r.requestId)}`, r.requestId)),
        nodes ? h('td', { class: 'node' }, r.node || '') : null))));
  }

  async function pageInvocations(params) {
    const fn = params.get('function') || '';
    const [fns, rows] = await Promise.all([
      api('/functions'),
      api(`/invocations?limit=100${fn ? `&function=${encodeURIComponent(fn)}` : ''}`),
    ]);
    const picker = h('select', { id: 'function-filter', onchange: (e) => go(`/invocations${e.target.value ? `?function=${encodeURIComponent(e.target.value)}` : ''}`) },
      h('option', { value: '' }, 'all functions'), fns.map((f) => h('option', { value: f.name, selected: f.name === fn }, f.name)));
    return [
      head('Invocations', h('span', { class: 'muted' }, 'newest first'), h('span', { class: 'spacer' }), picker),
      h('div', { class: 'card' }, invocationTable(rows, true)),
    ];
  }

  // The cold-start breakdown, in the order the phases happen. Records that carry the phases
  // (instanceStartMs, runtimeInitMs, handlerMs) are drawn from them; older records from their
  // init time and duration. The queue wait overlaps the start (a cold request waits for its
  // instance), so it is listed, not stacked.
  const PHASES = [['instanceStartMs', 'instance start'], ['runtimeInitMs', 'runtime init'], ['handlerMs', 'handler']];

  function phasesOf(r) {
    const present = PHASES.filter(([k]) => typeof r[k] === 'number');
    if (present.length) return present.map(([k, label]) => [label, r[k]]);
    const out = [];
    if (typeof r.initMs === 'number') out.push(['init', r.initMs]);
    out.push(['handler', r.durationMs]);
    return out;
  }

  function breakdown(r) {
    const phases = phasesOf(r);
    const total = phases.reduce((a, [, v]) => a + v, 0) || 1;
    const extra = [];
    if (typeof r.queueMs === 'number') extra.push(['queue wait', r.queueMs]);
    if (typeof r.initMs === 'number' && !phases.some(([l]) => l === 'init')) extra.push(['init (total)', r.initMs]);
    return h('div', { id: 'cold-breakdown', class: 'breakdown' }, h('h2', {}, r.cold ? 'Cold start' : 'Timing'),
      h('div', { class: 'phases' }, phases.map(([label, v], i) => {
        const span = h('span', { class: `phase-${i}`, title: `${label}: ${fmtMs(v)}` });
        span.style.width = `${(100 * v) / total}%`;
        return span;
      })),
      h('dl', { class: 'kv' }, phases.map(([label, v], i) => kv(h('span', {}, h('i', { class: `swatch phase-${i}` }), label), fmtMs(v))),
        extra.map(([label, v]) => kv(label, fmtMs(v)))));
  }

  async function pageInvocation(id) {
    const [records, single] = await Promise.all([
      api(`/invocations?requestId=${encodeURIComponent(id)}&limit=50`),
      api(`/invocations/${encodeURIComponent(id)}`).catch(() => null),
    ]);
    const event = single && Array.isArray(single.history) ? single : null;
    const out = [head('Invocation', h('span', { class: 'mono muted' }, id))];
    if (!records.length && !event) {
      out.push(h('div', { class: 'note' }, 'No record of this invocation (records are written within a moment of the invocation ending).'));
      return out;
    }
    if (event) out.push(eventCard(event));
    const fn = (records[0] && records[0].function) || (event && event.function);
    for (const r of records.slice().reverse()) {
      out.push(h('div', { class: 'card record', 'data-request-id': r.requestId },
        h('div', { class: 'chart-head' }, h('h2', {}, `${r.function} · v${r.version}`), statusBadge(r.status)),
        h('dl', { class: 'kv' },
          kv('Started', fmtTime(r.startMs)), kv('Duration', fmtMs(r.durationMs)), kv('Billed', fmtMs(r.billedMs)),
          kv('Memory', `${r.maxMemoryMb} of ${r.memoryMb} MB`), kv('Trigger', r.trigger),
          kv('Start', r.cold ? h('span', { class: 'badge cold' }, 'cold') : 'warm'),
          r.errorType ? kv('Error type', r.errorType) : null,
          r.errorMessage ? kv('Error', h('span', { id: 'error-message' }, r.errorMessage)) : null,
          kv('Instance', h('span', { class: 'mono' }, r.instanceId || '–'))),
        r.cold || PHASES.some(([k]) => typeof r[k] === 'number') ? breakdown(r) : null));
    }
    if (fn) {
      const logs = await api(`/functions/${encodeURIComponent(fn)}/logs?requestId=${encodeURIComponent(id)}&limit=100`);
      const text = logs.entries.map((e) => e.text).join('');
      out.push(h('div', { class: 'card' }, h('h2', {}, 'Log'),
        text ? h('pre', { class: 'log', id: 'log' }, text) : h('div', { class: 'empty', id: 'log' }, 'This invocation wrote no log.')));
    }
    return out;
  }

  function eventCard(ev) {
    return h('div', { class: 'card', id: 'event' },
      h('div', { class: 'chart-head' }, h('h2', {}, `Async event · ${ev.function}`), statusBadge(ev.status)),
      h('dl', { class: 'kv' },
        kv('Accepted', fmtTime(ev.acceptedMs)), kv('Source', ev.source), kv('Attempts', fmtInt(ev.attempts)),
        ev.nextRunMs ? kv('Next run', fmtTime(ev.nextRunMs)) : null,
        ev.reason ? kv('Reason', ev.reason) : null,
        ev.lastError ? kv('Last error', `${ev.lastErrorType ? ev.lastErrorType + ': ' : ''}${ev.lastError}`) : null),
      h('h2', { class: 'muted' }, 'Payload'), h('pre', { class: 'json' }, JSON.stringify(ev.payload, null, 2)),
      ev.result !== null && ev.result !== undefined ? [h('h2', { class: 'muted' }, 'Result'), h('pre', { class: 'json' }, JSON.stringify(ev.result, null, 2))] : null);
  }

  const STATUSES = ['dead-lettered', 'queued', 'running', 'failed', 'succeeded'];

  async function pageAsync(params) {
    const status = STATUSES.includes(params.get('status')) ? params.get('status') : 'dead-lettered';
    const [queue, dlq, events] = await Promise.all([
      api('/queue'), api('/dlq?limit=1000'), api(`/invocations?status=${status}&limit=200`),
    ]);
    const tabs = h('div', { class: 'tabs' }, STATUSES.map((s) => h('button', {
      class: s === status ? 'active' : null, 'data-tab': s, onclick: () => go(`/async?status=${s}`),
    }, s === 'dead-lettered' ? `dead-lettered (${dlq.length})` : s)));
    const actions = status === 'dead-lettered' && events.length
      ? h('div', { class: 'page-head' },
        h('button', { id: 'redrive-all', onclick: (e) => redrive(e.currentTarget, { all: true }) }, `Redrive all ${events.length}`),
        purgeButton(events.length))
      : null;
    const rows = events.map((ev) => {
      const detail = h('tr', { class: 'detail', hidden: true }, h('td', { colspan: 7 }, eventCard(ev)));
      const row = h('tr', { class: 'clickable', 'data-event': ev.requestId, onclick: (e) => {
        if (e.target.tagName !== 'BUTTON' && e.target.tagName !== 'A') detail.hidden = !detail.hidden;
      } },
      h('td', { class: 'mono' }, link(`/invocations/${encodeURIComponent(ev.requestId)}`, ev.requestId)),
      h('td', {}, ev.function), h('td', {}, statusBadge(ev.status)), h('td', { class: 'num' }, fmtInt(ev.attempts)),
      h('td', {}, fmtTime(ev.acceptedMs)),
      h('td', { class: 'err' }, ev.reason || ev.lastError || ''),
      h('td', { class: 'num' }, ev.status === 'dead-lettered'
        ? h('button', { class: 'secondary', 'data-redrive': ev.requestId, onclick: (e) => redrive(e.currentTarget, { ids: [ev.requestId] }) }, 'Redrive')
        : null));
      return [row, detail];
    });
    return [
      head('Async queue and dead letters'),
      h('div', { class: 'tiles' },
        tile('Unfinished events', fmtInt(queue.depth), '', 'tile-depth'),
        tile('Dead letters', fmtInt(dlq.length), dlq.length ? 'bad' : '', 'tile-dlq'),
        tile('Recovered at start', fmtInt(queue.recoveredAtStart))),
      tabs, actions,
      h('div', { class: 'card' }, events.length
        ? h('table', { id: 'events' }, h('thead', {}, h('tr', {}, ['Request id', 'Function', 'Status', 'Attempts', 'Accepted', 'Why', '']
          .map((c, i) => h('th', { class: i === 3 ? 'num' : null }, c)))), h('tbody', {}, rows))
        : h('div', { class: 'empty', id: 'events-empty' }, status === 'dead-lettered' ? 'The dead-letter store is empty.' : `No ${status} events.`)),
    ];
  }

  function purgeButton(count) {
    const b = h('button', { class: 'danger', id: 'purge' }, 'Purge…');
    b.addEventListener('click', async () => {
      if (!b.classList.contains('armed')) {
        b.classList.add('armed');
        b.textContent = `Delete ${count} dead letters for good`;
        return;
      }
      b.disabled = true;
      try {
        const r = await api('/dlq/purge', { method: 'POST', body: {} });
        toast(`${r.purged} dead-lettered event(s) deleted`);
        await render();
      } catch (e) {
        toast(`Purge failed: ${e.message}`, true);
        b.disabled = false;
      }
    });
    return b;
  }

  async function redrive(button, body) {
    button.disabled = true;
    try {
      const r = await api('/dlq/redrive', { method: 'POST', body });
      toast(`${r.redriven} event(s) sent back to the queue`);
      await render();
    } catch (e) {
      button.disabled = false;
      toast(`Redrive failed: ${e.message}`, true);
    }
  }

  const SINCES = ['24h', '7d', '30d'];

  async function pageUsage(params) {
    const since = SINCES.includes(params.get('since')) ? params.get('since') : '24h';
    const picker = h('select', { id: 'since', onchange: (e) => go(`/usage?since=${e.target.value}`) },
      SINCES.map((s) => h('option', { value: s, selected: s === since }, `last ${s}`)));
    const title = head('Usage and cost', h('span', { class: 'spacer' }), picker);
    let u;
    try {
      u = await api(`/usage?since=${since}`);
    } catch (e) {
      if (e.status === 404) {
        return [title, h('div', { class: 'note', id: 'usage-unavailable' },
          'Usage and cost are not available on this server: it has no usage API (GET /v1/usage). Upgrade nimbus to see GB-seconds, requests and cost here.')];
      }
      throw e;
    }
    const cur = (u.prices && u.prices.currency) || 'USD';
    const fns = u.functions || [];
    const total = u.total || {};
    const always = u.alwaysOn || null;
    // Cost per time bucket, all functions together.
    const byStart = new Map();
    for (const b of u.buckets || []) byStart.set(b.startMs, (byStart.get(b.startMs) || 0) + (b.cost || 0));
    const starts = [...byStart.keys()].sort((a, b) => a - b);
    const series = starts.map((s) => ({ startMs: s, cost: byStart.get(s) }));
    let comparison = null;
    if (always) {
      const ratio = total.cost > 0 ? always.cost / total.cost : null;
      comparison = h('div', { class: 'card', id: 'always-on' }, h('h2', {}, 'Against always-on servers'),
        h('p', {}, `The same period on ${always.servers} always-on server(s) at ${fmtMoney(always.serverPerHour, cur)} per hour for ${Number(always.hours).toFixed(1)} h would cost `,
          h('strong', {}, fmtMoney(always.cost, cur)), ` — against `, h('strong', {}, fmtMoney(total.cost, cur)),
          ratio ? ` on nimbus (${ratio >= 1 ? `${ratio.toFixed(ratio >= 10 ? 0 : 1)}× more` : `${(1 / ratio).toFixed(1)}× less`} on servers).` : ' on nimbus.'));
    }
    return [
      title,
      h('div', { class: 'tiles' },
        tile('Requests', fmtInt(total.requests), '', 'tile-requests'),
        tile('GB-seconds', total.gbSeconds === undefined ? '–' : Number(total.gbSeconds).toFixed(3)),
        tile('Cost', fmtMoney(total.cost, cur), '', 'tile-cost'),
        always ? tile('Always-on cost', fmtMoney(always.cost, cur)) : null),
      comparison,
      series.length ? chart({ id: 'cost', title: 'Cost over time', kind: 'bar', wide: true, buckets: series, format: (v) => fmtMoney(v, cur), series: [{ key: 'cost', label: 'cost' }] }) : null,
      h('div', { class: 'card' }, h('h2', {}, 'By function'),
        fns.length ? h('table', { id: 'usage-functions' },
          h('thead', {}, h('tr', {}, ['Function', 'Requests', 'GB-seconds', 'Request cost', 'Compute cost', 'Cost'].map((c, i) => h('th', { class: i ? 'num' : null }, c)))),
          h('tbody', {}, fns.map((f) => h('tr', {},
            h('td', {}, f.function), h('td', { class: 'num' }, fmtInt(f.requests)), h('td', { class: 'num' }, Number(f.gbSeconds).toFixed(3)),
            h('td', { class: 'num' }, fmtMoney(f.requestCost, cur)), h('td', { class: 'num' }, fmtMoney(f.computeCost, cur)),
            h('td', { class: 'num' }, fmtMoney(f.cost, cur))))))
          : h('div', { class: 'empty' }, 'No usage in this period')),
      storageUsage(u, cur),
      u.prices ? h('p', { class: 'muted' }, `Prices: ${fmtMoney(u.prices.perMillionRequests, cur)} per million requests, ${fmtMoney(u.prices.perGbSecond, cur)} per GB-second.`) : null,
    ];
  }

  // Bytes in SI units, as storage is billed (a GB is 10^9 bytes).
  function fmtBytes(n) {
    if (n === null || n === undefined) return '–';
    const units = ['B', 'kB', 'MB', 'GB', 'TB'];
    let v = Number(n);
    let i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
    return i === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
  }

  // Buckets (object storage) and KV namespaces: what each holds now.
  async function pageStorage() {
    const [buckets, namespaces] = await Promise.all([api('/buckets'), api('/kv')]);
    const table = (id, attr, first, rows) => h('table', { id },
      h('thead', {}, h('tr', {}, [first, first === 'Bucket' ? 'Objects' : 'Keys', 'Size', 'Created'].map((c, i) => h('th', { class: i === 1 || i === 2 ? 'num' : null }, c)))),
      h('tbody', {}, rows.map((r) => h('tr', { [attr]: r.name },
        h('td', { class: 'mono' }, r.name), h('td', { class: 'num', 'data-count': r.objects === undefined ? r.keys : r.objects }, fmtInt(r.objects === undefined ? r.keys : r.objects)),
        h('td', { class: 'num', 'data-bytes': r.bytes }, fmtBytes(r.bytes)), h('td', {}, fmtTime(r.createdMs))))));
    const sum = (list, k) => list.reduce((a, r) => a + (r[k] || 0), 0);
    return [
      head('Storage'),
      h('div', { class: 'tiles' },
        tile('Buckets', fmtInt(buckets.length), '', 'tile-buckets'),
        tile('Objects', fmtInt(sum(buckets, 'objects'))),
        tile('Stored in buckets', fmtBytes(sum(buckets, 'bytes'))),
        tile('KV namespaces', fmtInt(namespaces.length), '', 'tile-namespaces'),
        tile('KV keys', fmtInt(sum(namespaces, 'keys')))),
      h('div', { class: 'card' }, h('h2', {}, 'Buckets'),
        buckets.length ? table('buckets', 'data-bucket', 'Bucket', buckets)
          : h('div', { class: 'empty' }, 'No buckets. Declare one in nimbus.toml ([buckets.NAME]) or create it with an S3 client.')),
      h('div', { class: 'card' }, h('h2', {}, 'KV namespaces'),
        namespaces.length ? table('namespaces', 'data-namespace', 'Namespace', namespaces)
          : h('div', { class: 'empty' }, 'No KV namespaces. Declare one in nimbus.toml ([kv.NAME]).')),
      h('p', { class: 'muted' }, 'Sizes count object bytes, and key plus value bytes of unexpired KV keys. Usage & cost prices them.'),
    ];
  }

  // Message queues (SQS): depth by state, the oldest message's age, and counters since start.
  async function pageQueues() {
    const queues = await api('/queues');
    const sum = (k) => queues.reduce((a, q) => a + (q[k] || 0), 0);
    const cols = ['Queue', 'Visible', 'In flight', 'Delayed', 'Oldest', 'Sent', 'Received', 'Deleted', 'Dead-lettered', 'Dead-letter queue'];
    const num = (v, key) => h('td', { class: 'num', [`data-${key}`]: v }, fmtInt(v));
    const dlq = (q) => (q.deadLetterQueue ? `${q.deadLetterQueue} (after ${q.maxReceiveCount})` : '–');
    return [
      head('Queues'),
      h('div', { class: 'tiles' },
        tile('Queues', fmtInt(queues.length), '', 'tile-queues'),
        tile('Visible', fmtInt(sum('visible'))),
        tile('In flight', fmtInt(sum('inFlight'))),
        tile('Oldest message', fmtMs(Math.max(0, ...queues.map((q) => q.oldestAgeMs || 0))))),
      h('div', { class: 'card' }, h('h2', {}, 'Queues'),
        queues.length ? h('table', { id: 'queues' },
          h('thead', {}, h('tr', {}, cols.map((c, i) => h('th', { class: i > 0 && i < 9 ? 'num' : null }, c)))),
          h('tbody', {}, queues.map((q) => h('tr', { 'data-queue': q.name },
            h('td', { class: 'mono' }, q.name + (q.fifo ? ' (FIFO)' : '')),
            num(q.visible, 'visible'), num(q.inFlight, 'in-flight'), num(q.delayed, 'delayed'),
            h('td', { class: 'num', 'data-oldest': q.oldestAgeMs === null ? '' : q.oldestAgeMs }, fmtMs(q.oldestAgeMs)),
            num(q.sent, 'sent'), num(q.received, 'received'), num(q.deleted, 'deleted'), num(q.deadLettered, 'dead-lettered'),
            h('td', { class: 'mono' }, dlq(q))))))
          : h('div', { class: 'empty' }, 'No queues. Declare one in nimbus.toml ([queues.NAME]) or create it with an SQS client.')),
      h('p', { class: 'muted' }, 'Sent, received, deleted and dead-lettered count since nimbus started. `nimbus queues peek NAME` shows messages without receiving them.'),
    ];
  }

  // The storage part of the usage report (absent from servers older than it).
  function storageUsage(u, cur) {
    const list = u.storage || [];
    if (!list.length) return null;
    const t = u.storageTotal || {};
    return h('div', { class: 'card', id: 'usage-storage' }, h('h2', {}, `Storage: ${fmtMoney(t.cost, cur)}`),
      h('table', {},
        h('thead', {}, h('tr', {}, ['Kind', 'Name', 'Stored now', 'GB-months', 'Writes (class A)', 'Reads (class B)', 'Out', 'Cost'].map((c, i) => h('th', { class: i > 1 ? 'num' : null }, c)))),
        h('tbody', {}, list.map((s) => {
          const bucket = s.kind === 'bucket';
          return h('tr', { 'data-storage': `${s.kind}/${s.name}` },
            h('td', {}, bucket ? 'bucket' : 'KV'), h('td', { class: 'mono' }, s.name),
            h('td', { class: 'num' }, fmtBytes(s.bytes)), h('td', { class: 'num' }, Number(s.gbMonths).toFixed(6)),
            h('td', { class: 'num' }, fmtInt(bucket ? s.classA : s.writes + s.deletes + s.lists)),
            h('td', { class: 'num' }, fmtInt(bucket ? s.classB : s.reads)),
            h('td', { class: 'num' }, fmtBytes(s.bytesOut)), h('td', { class: 'num' }, fmtMoney(s.cost, cur)));
        }))));
  }

  // ---------- router ----------

  function route() {
    const path = window.location.pathname.replace(/^\/dashboard/, '').replace(/\/+$/, '') || '/';
    const params = new URLSearchParams(window.location.search);
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    if (parts.length === 0) return ['deployments', () => pageDeployments()];
    if (parts[0] === 'functions' && parts.length === 1) return ['functions', () => pageFunctions()];
    if (parts[0] === 'functions' && parts.length === 2) return ['functions', () => pageFunction(parts[1], params)];
    if (parts[0] === 'invocations' && parts.length === 1) return ['invocations', () => pageInvocations(params)];
    if (parts[0] === 'invocations' && parts.length === 2) return ['invocations', () => pageInvocation(parts[1])];
    if (parts[0] === 'async') return ['async', () => pageAsync(params)];
    if (parts[0] === 'usage') return ['usage', () => pageUsage(params)];
    if (parts[0] === 'storage') return ['storage', () => pageStorage()];
    if (parts[0] === 'queues') return ['queues', () => pageQueues()];
    return [null, async () => [head('Not found'), h('div', { class: 'note' }, 'There is no dashboard page here. ', link('/', 'Go to the deployments.'))]];
  }

  let generation = 0;
  async function render() {
    const mine = ++generation;
    const [nav, page] = route();
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.nav === nav);
    document.body.dataset.page = nav || 'none';
    let content;
    try {
      content = await page();
    } catch (e) {
      content = [errorBox(e)];
    }
    if (mine !== generation) return; // a newer navigation won
    main.replaceChildren(...[content].flat(Infinity).filter((c) => c instanceof Node));
    main.dataset.ready = String(mine);
    refreshHeader();
  }

  function go(path) {
    window.history.pushState(null, '', BASE + path);
    render();
  }

  document.addEventListener('click', (e) => {
    const a = e.target.closest && e.target.closest('a[data-link]');
    if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    window.history.pushState(null, '', a.getAttribute('href'));
    render();
  });
  window.addEventListener('popstate', render);
  render();
})();
