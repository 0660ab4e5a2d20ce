/*
 * app.js - the Starling dashboard: a single page over the admin API
 * (docs/api.md), without any library.
 *
 * The API key (key + secret) is kept in sessionStorage (this tab only) and
 * sent with HTTP Basic on every API call; the static files themselves need
 * none. Views are switched by the URL's #fragment. Every list is rendered
 * from whatever fields the API returns, so a field added later shows up; an
 * endpoint the answering node does not have (404 "not_found" for the path,
 * or 405) shows "not available on this node" instead of an error.
 */
'use strict';

(function () {
  const AUTH_KEY = 'starling.auth';
  const POLL_MS = 2000;
  const CHART_POINTS = 60;

  const $ = (id) => document.getElementById(id);

  // ---- the API ------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
    // The path or method does not exist on this node (not a missing object).
    get unavailable() {
      return this.status === 405 || this.status === 501 ||
        (this.status === 404 && this.code === 'not_found' && /^no such resource/.test(this.message));
    }
  }

  function auth() {
    return sessionStorage.getItem(AUTH_KEY);
  }

  async function api(method, path, body) {
    const headers = { 'X-Requested-With': 'XMLHttpRequest' };
    const a = auth();
    if (a) headers.Authorization = 'Basic ' + a;
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let doc = null;
    const text = await resp.text();
    if (text) {
      try { doc = JSON.parse(text); } catch (e) { doc = null; }
    }
    if (!resp.ok) {
      const code = doc && doc.code ? doc.code : 'http_' + resp.status;
      const msg = doc && doc.message ? doc.message : (doc && doc.reason ? doc.reason : resp.statusText);
      if (resp.status === 401 && a) {
        sessionStorage.removeItem(AUTH_KEY);
        showLogin('The API key was refused: ' + msg);
      }
      throw new ApiError(resp.status, code, msg);
    }
    return doc;
  }

  const enc = encodeURIComponent;

  // ---- rendering helpers ----------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k.startsWith('data-')) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function cell(v) {
    if (v === true) return el('span', { class: 'yes' }, 'yes');
    if (v === false) return el('span', { class: 'no' }, 'no');
    if (v === null || v === undefined) return '-';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  function setStatus(id, text, isError) {
    const p = $(id);
    p.textContent = text || '';
    p.classList.toggle('error', !!isError);
  }

  function showFailure(statusId, e, table) {
    if (e instanceof ApiError && e.unavailable) {
      setStatus(statusId, 'not available on this node');
      $(statusId).classList.add('unavailable');
      if (table) clearTable(table);
    } else {
      setStatus(statusId, 'error: ' + e.message, true);
    }
  }

  function clearTable(table) {
    table.tHead.replaceChildren();
    table.tBodies[0].replaceChildren();
  }

  // A table of objects: the columns of `cols` that some row has first, then
  // the rows' other scalar fields. actions(row) may return extra cells'
  // content (buttons).
  function fillTable(table, rows, cols, onRow, actions) {
    const keys = (cols || []).filter((k) => rows.some((r) => k in r));
    for (const r of rows)
      for (const k of Object.keys(r))
        if (!keys.includes(k) && (typeof r[k] !== 'object' || r[k] === null)) keys.push(k);
    const head = el('tr', {}, ...keys.map((k) => el('th', {}, k)));
    if (actions) head.append(el('th', {}, ''));
    table.tHead.replaceChildren(head);
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const r of rows) {
      const tr = el('tr', {}, ...keys.map((k) => el('td', {}, cell(r[k]))));
      if (actions) tr.append(el('td', {}, ...actions(r)));
      if (onRow) {
        tr.classList.add('clickable');
        tr.addEventListener('click', () => onRow(r));
      }
      body.append(tr);
    }
  }

  function rowsOf(doc) {
    if (Array.isArray(doc)) return doc;
    if (doc && Array.isArray(doc.data)) return doc.data;
    return [];
  }

  function clientIdOf(c) {
    for (const k of ['clientid', 'client_id', 'id']) if (typeof c[k] === 'string') return c[k];
    return '';
  }

  function duration(s) {
    if (typeof s !== 'number') return '-';
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + m + 'm ' + (s % 60) + 's';
  }

  // ---- charts: a line over the last CHART_POINTS samples, on a canvas -------

  class Chart {
    constructor(canvas, color) {
      this.canvas = canvas;
      this.color = color;
      this.points = [];
    }
    push(v) {
      this.points.push(v);
      if (this.points.length > CHART_POINTS) this.points.shift();
      this.canvas.dataset.points = String(this.points.length);
      this.canvas.dataset.last = String(v);
      this.draw();
    }
    draw() {
      const c = this.canvas, g = c.getContext('2d');
      const w = c.width, h = c.height, left = 44, bottom = 18, top = 8;
      g.clearRect(0, 0, w, h);
      g.fillStyle = '#ffffff';
      g.fillRect(0, 0, w, h);
      const max = Math.max(1, ...this.points);
      const nice = Math.pow(10, Math.floor(Math.log10(max)));
      const ymax = Math.ceil(max / nice) * nice;
      g.strokeStyle = '#d5dae3';
      g.fillStyle = '#5b6577';
      g.font = '11px sans-serif';
      g.lineWidth = 1;
      for (let i = 0; i <= 4; i++) {
        const y = top + (h - top - bottom) * (1 - i / 4);
        g.beginPath();
        g.moveTo(left, y);
        g.lineTo(w - 4, y);
        g.stroke();
        const label = ymax * i / 4;
        g.fillText(label >= 1000 ? (label / 1000).toFixed(1) + 'k' : String(+label.toFixed(1)), 2, y + 4);
      }
      g.fillText('-' + Math.round(CHART_POINTS * POLL_MS / 1000) + ' s', left, h - 4);
      g.fillText('now', w - 26, h - 4);
      if (this.points.length < 2) return;
      const step = (w - 4 - left) / (CHART_POINTS - 1);
      const x0 = w - 4 - step * (this.points.length - 1);
      g.strokeStyle = this.color;
      g.lineWidth = 2;
      g.beginPath();
      this.points.forEach((v, i) => {
        const x = x0 + i * step, y = top + (h - top - bottom) * (1 - v / ymax);
        if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    }
  }

  const charts = {};
  let lastTotals = null;

  // ---- views ------------------------------------------------------------------

  const views = {};
  let current = null;
  let pollTimer = null;

  function showLogin(message) {
    stopPolling();
    $('nav').hidden = true;
    $('logout').hidden = true;
    $('whoami').textContent = '';
    for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== 'view-login';
    $('login-error').textContent = message || '';
    current = null;
  }

  function stopPolling() {
    if (pollTimer) clearInterval(pollTimer);
    pollTimer = null;
  }

  function route() {
    if (!auth()) {
      showLogin();
      return;
    }
    const name = (location.hash || '#overview').slice(1);
    const view = views[name] ? name : 'overview';
    $('nav').hidden = false;
    $('logout').hidden = false;
    $('whoami').textContent = 'key: ' + (sessionStorage.getItem(AUTH_KEY + '.key') || '');
    for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== 'view-' + view;
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.view === view);
    stopPolling();
    current = view;
    views[view].show();
  }

  // Overview: the nodes, the totals, and the rates.
  async function refreshOverview() {
    let cluster, stats;
    try {
      [cluster, stats] = await Promise.all([api('GET', '/api/v1/cluster'), api('GET', '/api/v1/stats')]);
    } catch (e) {
      $('cluster-summary').textContent = 'error: ' + e.message;
      return;
    }
    const perNode = {};
    for (const s of stats.nodes || []) perNode[s.node] = s;
    const n = (cluster.nodes || []).length;
    $('cluster-summary').textContent =
      (cluster.clustered ? 'clustered' : 'standalone') + ', ' + n + ' node' + (n === 1 ? '' : 's') +
      ', leader ' + (cluster.leader || '-') + ', answered by ' + (cluster.self || '-');
    const body = $('nodes-table').tBodies[0];
    body.replaceChildren();
    for (const node of cluster.nodes || []) {
      const s = perNode[node.name] || {};
      body.append(el('tr', { 'data-node': node.name },
        el('td', {}, node.name), el('td', {}, node.address), el('td', {}, node.role),
        el('td', {}, cell(node.reachable)), el('td', {}, cell(node.leader)),
        el('td', {}, cell(s.clients_connected)), el('td', {}, cell(s.messages_received)),
        el('td', {}, cell(s.messages_sent)), el('td', {}, duration(s.uptime_seconds))));
    }
    const t = stats.total || {};
    const dl = $('totals');
    dl.replaceChildren();
    for (const k of ['connections', 'clients_connected', 'sessions', 'subscriptions', 'retained',
      'messages_received', 'messages_sent', 'messages_dropped']) {
      dl.append(el('dt', {}, k.replace(/_/g, ' ')), el('dd', { 'data-total': k }, cell(t[k])));
    }
    const now = performance.now();
    if (lastTotals) {
      const dt = (now - lastTotals.at) / 1000;
      const rate = (k) => Math.max(0, ((t[k] || 0) - (lastTotals[k] || 0)) / dt);
      charts.in.push(rate('messages_received'));
      charts.out.push(rate('messages_sent'));
    }
    charts.conn.push(t.connections || 0);
    lastTotals = { at: now, messages_received: t.messages_received, messages_sent: t.messages_sent };
  }

  views.overview = {
    show() {
      refreshOverview();
      pollTimer = setInterval(refreshOverview, POLL_MS);
    },
  };

  // Clients: a page of the list, filtered here by a substring of the id.
  let clientsPage = 1;
  let selectedClient = null;

  async function refreshClients() {
    const table = $('clients-table');
    $('clients-page').textContent = 'page ' + clientsPage;
    let doc;
    try {
      doc = await api('GET', '/api/v1/clients?limit=100&page=' + clientsPage);
    } catch (e) {
      showFailure('clients-status', e, table);
      return;
    }
    const q = $('clients-search').value.trim();
    const rows = rowsOf(doc).filter((c) => !q || clientIdOf(c).includes(q));
    const count = doc && doc.meta && typeof doc.meta.count === 'number' ? doc.meta.count : rows.length;
    setStatus('clients-status', rows.length + ' shown' + (q ? ' matching "' + q + '"' : '') + ', ' + count + ' in all');
    fillTable(table, rows, ['clientid', 'username', 'node', 'connected'], inspectClient, (c) => [
      el('button', { type: 'button', class: 'danger', 'data-kick': clientIdOf(c),
        onclick: (ev) => { ev.stopPropagation(); kick(clientIdOf(c)); } }, 'Kick'),
    ]);
  }

  async function inspectClient(c) {
    const id = clientIdOf(c);
    selectedClient = id;
    $('client-detail').hidden = false;
    $('client-detail-id').textContent = id;
    setStatus('client-detail-status', '');
    const body = $('client-detail').querySelector('tbody');
    body.replaceChildren();
    let doc = c;
    try {
      doc = await api('GET', '/api/v1/clients/' + enc(id));
    } catch (e) {
      showFailure('client-detail-status', e);
    }
    for (const [k, v] of Object.entries(doc || {})) body.append(el('tr', {}, el('td', {}, k), el('td', {}, cell(v))));
  }

  async function kick(id) {
    if (!id) return;
    try {
      await api('DELETE', '/api/v1/clients/' + enc(id));
      setStatus('clients-status', 'kicked ' + id);
      if (selectedClient === id) $('client-detail').hidden = true;
    } catch (e) {
      showFailure('clients-status', e);
      return;
    }
    await refreshClients();
    setStatus('clients-status', 'kicked ' + id + '; ' + $('clients-status').textContent);
  }

  views.clients = {
    show() {
      $('client-detail').hidden = true;
      refreshClients();
    },
  };

  // Subscriptions, with the API's own filters.
  async function refreshSubs() {
    const qs = new URLSearchParams({ limit: '1000' });
    const client = $('subs-client').value.trim(), topic = $('subs-topic').value.trim();
    if (client) qs.set('client', client);
    if (topic) qs.set('topic', topic);
    try {
      const doc = await api('GET', '/api/v1/subscriptions?' + qs);
      const rows = rowsOf(doc);
      setStatus('subs-status', rows.length + ' subscription' + (rows.length === 1 ? '' : 's'));
      fillTable($('subs-table'), rows, ['clientid', 'topic', 'qos', 'node']);
    } catch (e) {
      showFailure('subs-status', e, $('subs-table'));
    }
  }
  views.subscriptions = { show: refreshSubs };

  // Retained messages, each with a delete button.
  async function refreshRetained() {
    try {
      const doc = await api('GET', '/api/v1/retained?limit=1000');
      const rows = rowsOf(doc);
      setStatus('retained-status', rows.length + ' retained message' + (rows.length === 1 ? '' : 's'));
      fillTable($('retained-table'), rows, ['topic', 'qos', 'payload'], null, (r) => [
        el('button', { type: 'button', onclick: () => deleteRetained(r.topic) }, 'Delete'),
      ]);
    } catch (e) {
      showFailure('retained-status', e, $('retained-table'));
    }
  }
  async function deleteRetained(topic) {
    try {
      await api('DELETE', '/api/v1/retained/' + enc(topic));
    } catch (e) {
      showFailure('retained-status', e);
      return;
    }
    refreshRetained();
  }
  views.retained = { show: refreshRetained };

  // Publish.
  views.publish = { show() {} };
  async function publish(ev) {
    ev.preventDefault();
    const msg = {
      topic: $('pub-topic').value,
      payload: $('pub-payload').value,
      qos: Number($('pub-qos').value),
      retain: $('pub-retain').checked,
    };
    try {
      const doc = await api('POST', '/api/v1/publish', msg);
      setStatus('publish-status', 'published to ' + doc.topic + ' (QoS ' + doc.qos + '), delivered to ' +
        doc.delivered + ' session' + (doc.delivered === 1 ? '' : 's'));
    } catch (e) {
      showFailure('publish-status', e);
    }
  }

  // Banned clients: list, add, remove.
  async function refreshBanned() {
    try {
      const doc = await api('GET', '/api/v1/banned?limit=1000');
      const rows = rowsOf(doc);
      setStatus('banned-status', rows.length + ' ban' + (rows.length === 1 ? '' : 's'));
      fillTable($('banned-table'), rows, ['as', 'who', 'until'], null, (b) => [
        el('button', { type: 'button', onclick: () => unban(b) }, 'Remove'),
      ]);
    } catch (e) {
      showFailure('banned-status', e, $('banned-table'));
    }
  }
  async function ban(ev) {
    ev.preventDefault();
    const body = { as: $('ban-as').value, who: $('ban-who').value };
    const secs = $('ban-seconds').value.trim();
    if (secs) body.until = Math.floor(Date.now() / 1000) + Number(secs);
    try {
      await api('POST', '/api/v1/banned', body);
    } catch (e) {
      showFailure('banned-status', e);
      return;
    }
    refreshBanned();
  }
  async function unban(b) {
    try {
      await api('DELETE', '/api/v1/banned/' + enc(b.as) + '/' + enc(b.who));
    } catch (e) {
      showFailure('banned-status', e);
      return;
    }
    refreshBanned();
  }
  views.banned = { show: refreshBanned };

  // ---- log in / out -----------------------------------------------------------

  async function login(ev) {
    ev.preventDefault();
    const key = $('login-key').value.trim(), secret = $('login-secret').value;
    const token = btoa(unescape(encodeURIComponent(key + ':' + secret)));
    sessionStorage.setItem(AUTH_KEY, token);
    sessionStorage.setItem(AUTH_KEY + '.key', key);
    try {
      await api('GET', '/api/v1/cluster');
    } catch (e) {
      sessionStorage.removeItem(AUTH_KEY);
      showLogin(e.status === 401 ? 'The API key or its secret is wrong.' : 'error: ' + e.message);
      return;
    }
    $('login-secret').value = '';
    if (!location.hash || location.hash === '#login') location.hash = '#overview';
    else route();
  }

  function logout() {
    sessionStorage.removeItem(AUTH_KEY);
    sessionStorage.removeItem(AUTH_KEY + '.key');
    showLogin('Logged out.');
  }

  document.addEventListener('DOMContentLoaded', () => {
    charts.in = new Chart($('chart-in'), '#1f6feb');
    charts.out = new Chart($('chart-out'), '#2e7d32');
    charts.conn = new Chart($('chart-conn'), '#8e44ad');
    for (const c of Object.values(charts)) c.draw();
    $('login-form').addEventListener('submit', login);
    $('logout').addEventListener('click', logout);
    $('clients-form').addEventListener('submit', (ev) => { ev.preventDefault(); clientsPage = 1; refreshClients(); });
    $('clients-prev').addEventListener('click', () => { if (clientsPage > 1) { clientsPage--; refreshClients(); } });
    $('clients-next').addEventListener('click', () => { clientsPage++; refreshClients(); });
    $('client-kick').addEventListener('click', () => kick(selectedClient));
    $('subs-form').addEventListener('submit', (ev) => { ev.preventDefault(); refreshSubs(); });
    $('publish-form').addEventListener('submit', publish);
    $('ban-form').addEventListener('submit', ban);
    window.addEventListener('hashchange', route);
    route();
  });
})();
