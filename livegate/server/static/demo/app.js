// The livegate demo chat (served at / when http_server.demo = true). Plain browser JavaScript,
// no build step: it uses the centrifuge-js browser bundle served at /demo/centrifuge.js (the
// global `Centrifuge`). Everything received is written as text (textContent), never as HTML.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const NAME_MAX = 32;

  let settings = null;        // GET /demo/config: channel and transport paths
  let centrifuge = null;
  let sub = null;
  let myName = '';
  let myClient = '';          // this page's client id (connected ctx.client)
  let presence = new Map();   // client id -> ClientInfo
  const seen = new Set();     // offsets of the publications shown
  let counting = null;        // {n}: publications delivered with a recovering subscribe

  function showError(text) {
    $('error').textContent = text;
    $('error').hidden = !text;
  }

  function setState(state, transport) {
    $('state').textContent = state;
    $('state').className = 'state ' + state;
    $('transport').textContent = transport || '';
  }

  // The transports to try, in order: websocket, http_stream, sse (those the server enables).
  // ?transports=sse,http_stream picks and orders them (e.g. to try the page without WebSocket).
  function transports() {
    const loc = window.location;
    const endpoints = {
      websocket: settings.websocket && (loc.protocol === 'https:' ? 'wss://' : 'ws://') + loc.host + settings.websocket,
      http_stream: settings.http_stream && loc.origin + settings.http_stream,
      sse: settings.sse && loc.origin + settings.sse,
    };
    const asked = new URLSearchParams(loc.search).get('transports');
    const order = asked ? asked.split(',').map((s) => s.trim()) : ['websocket', 'http_stream', 'sse'];
    return order.filter((t) => endpoints[t]).map((t) => ({ transport: t, endpoint: endpoints[t] }));
  }

  async function fetchToken(name) {
    const resp = await fetch('/demo/token', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name }),
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      throw new Error(body.error || 'token request failed: HTTP ' + resp.status);
    }
    return body.token;
  }

  function time(ms) {
    const el = document.createElement('time');
    const d = ms ? new Date(ms) : new Date();
    el.dateTime = d.toISOString();
    el.textContent = d.toLocaleTimeString();
    return el;
  }

  function scrollDown() {
    const list = $('messages');
    list.scrollTop = list.scrollHeight;
  }

  function systemLine(text) {
    const li = document.createElement('li');
    li.className = 'system';
    li.textContent = text;
    li.appendChild(time());
    $('messages').appendChild(li);
    scrollDown();
  }

  function nameOf(info) {
    const conn = info && info.connInfo;
    if (conn && typeof conn.name === 'string') return conn.name;
    return info && info.user ? info.user : '';
  }

  // A publication, live or from history, shown once (by offset) and in offset order.
  function addPublication(pub) {
    const offset = typeof pub.offset === 'number' ? pub.offset : null;
    if (offset !== null) {
      if (seen.has(offset)) return;
      seen.add(offset);
    }
    const data = pub.data;
    let who = nameOf(pub.info);
    if (!who && data && typeof data.name === 'string') who = data.name;
    const text = data && typeof data.text === 'string' ? data.text : JSON.stringify(data);
    const li = document.createElement('li');
    li.className = 'message';
    const whoEl = document.createElement('span');
    whoEl.className = 'who';
    whoEl.textContent = who || 'server';
    const textEl = document.createElement('span');
    textEl.className = 'text';
    textEl.textContent = text;
    li.append(whoEl, textEl, time());
    const list = $('messages');
    let before = null;
    if (offset !== null) {
      li.dataset.offset = String(offset);
      for (const el of list.querySelectorAll('li.message[data-offset]')) {
        if (Number(el.dataset.offset) > offset) { before = el; break; }
      }
    }
    list.insertBefore(li, before);
    if (!before) scrollDown();
  }

  async function loadHistory() {
    try {
      const res = await sub.history({ limit: 100, reverse: true });
      for (const pub of res.publications.slice().reverse()) addPublication(pub);
    } catch (err) {
      showError('history: ' + (err.message || JSON.stringify(err)));
    }
  }

  function renderPresence() {
    const byName = new Map();
    for (const info of presence.values()) {
      const name = nameOf(info);
      byName.set(name, (byName.get(name) || 0) + 1);
    }
    const list = $('presence');
    list.replaceChildren();
    for (const name of [...byName.keys()].sort()) {
      const li = document.createElement('li');
      const n = byName.get(name);
      li.textContent = name + (n > 1 ? ' (' + n + ' tabs)' : '');
      if (name === myName) li.className = 'me';
      list.appendChild(li);
    }
  }

  async function loadPresence() {
    try {
      const res = await sub.presence();
      presence = new Map(Object.entries(res.clients));
      renderPresence();
    } catch (err) {
      showError('presence: ' + (err.message || JSON.stringify(err)));
    }
  }

  function showRecovered(n) {
    $('recovered').textContent = 'Reconnected: recovered ' + n + ' missed message' + (n === 1 ? '' : 's') + '.';
    $('recovered').hidden = false;
  }

  function start(token) {
    const list = transports();
    const options = { token, getToken: () => fetchToken(myName), name: 'livegate-demo' };
    if (settings.emulation) options.emulationEndpoint = window.location.origin + settings.emulation;
    centrifuge = new Centrifuge(list, options);
    centrifuge.on('connecting', () => setState('connecting'));
    centrifuge.on('connected', (ctx) => {
      myClient = ctx.client;
      setState('connected', ctx.transport);
      showError('');
    });
    centrifuge.on('disconnected', (ctx) => {
      setState('disconnected');
      if (ctx.code !== 0) showError('disconnected: ' + ctx.reason + ' (' + ctx.code + ')');
    });
    centrifuge.on('error', (ctx) => console.debug('centrifuge error', ctx));

    sub = centrifuge.newSubscription(settings.channel, { joinLeave: true });
    sub.on('subscribed', (ctx) => {
      if (ctx.wasRecovering && ctx.recovered) {
        // The missed publications are delivered right after this event, in the same task:
        // count them until it ends.
        counting = { n: 0 };
        queueMicrotask(() => { const n = counting ? counting.n : 0; counting = null; showRecovered(n); });
      } else {
        if (ctx.wasRecovering) {
          systemLine('could not recover the missed messages: history reloaded');
          $('messages').replaceChildren();
          seen.clear();
        }
        loadHistory();
      }
      loadPresence();
    });
    sub.on('publication', (ctx) => {
      if (counting) counting.n += 1;
      addPublication(ctx);
    });
    sub.on('join', (ctx) => {
      presence.set(ctx.info.client, ctx.info);
      renderPresence();
      systemLine(ctx.info.client === myClient ? 'you joined' : nameOf(ctx.info) + ' joined');
    });
    sub.on('leave', (ctx) => {
      presence.delete(ctx.info.client);
      renderPresence();
      systemLine(nameOf(ctx.info) + ' left');
    });
    sub.on('error', (ctx) => showError('subscription: ' + (ctx.error && ctx.error.message)));
    sub.subscribe();
    centrifuge.connect();
  }

  async function join(event) {
    event.preventDefault();
    const name = $('name').value.trim();
    if (name.length < 1 || name.length > NAME_MAX) {
      showError('Your name: 1 to ' + NAME_MAX + ' characters.');
      return;
    }
    $('join').disabled = true;
    showError('');
    try {
      const token = await fetchToken(name);
      myName = name;
      $('login').hidden = true;
      $('chat').hidden = false;
      $('toggle').hidden = false;
      start(token);
      $('text').focus();
    } catch (err) {
      showError(err.message);
      $('join').disabled = false;
    }
  }

  async function send(event) {
    event.preventDefault();
    const text = $('text').value;
    if (!text.trim() || !sub) return;
    $('text').value = '';
    try {
      await sub.publish({ text });
    } catch (err) {
      showError('publish: ' + (err.message || JSON.stringify(err)));
      if (!$('text').value) $('text').value = text;  // not lost: it can be sent again
    }
  }

  function toggle() {
    if (!centrifuge) return;
    if (centrifuge.state === 'disconnected') {
      centrifuge.connect();
      $('toggle').textContent = 'Disconnect';
    } else {
      centrifuge.disconnect();
      $('toggle').textContent = 'Reconnect';
    }
  }

  async function init() {
    $('login').addEventListener('submit', join);
    $('compose').addEventListener('submit', send);
    $('toggle').addEventListener('click', toggle);
    if (typeof window.Centrifuge !== 'function') {
      $('sdk-missing').hidden = false;
      $('join').disabled = true;
      return;
    }
    try {
      const resp = await fetch('/demo/config');
      settings = await resp.json();
      $('join').disabled = false;
    } catch (err) {
      showError('cannot load /demo/config: ' + err.message);
    }
  }

  init();
})();
