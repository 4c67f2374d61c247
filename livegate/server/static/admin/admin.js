// livegate admin page. It calls the server API (<api prefix>/<method>) and nothing else, with
// the session token from <admin prefix>/login in an explicit header (never a cookie). Every
// value from the server is written with textContent, never parsed as HTML.
"use strict";

(() => {
  const API = document.body.dataset.apiPrefix;
  const ADMIN = document.body.dataset.adminPrefix;
  const STORAGE_KEY = "livegate-admin-token";
  const REFRESH_MS = 3000;
  const MAX_CHANNEL_ROWS = 1000;
  const HISTORY_LIMIT = 20;

  const $ = (id) => document.getElementById(id);

  let token = null;
  let selected = "";     // the channel shown in the detail card
  let pattern = "";      // the channels filter
  let timer = null;
  let busy = false;
  let detailSeq = 0;     // answers for a channel no longer shown are dropped
  let refreshes = 0;

  class ApiError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  // -- session ---------------------------------------------------------------------------

  const expiryOf = (t) => Number(String(t).split(".", 1)[0]) || 0;
  const valid = (t) => Boolean(t) && expiryOf(t) * 1000 > Date.now();

  function storedToken() {
    try {
      const t = sessionStorage.getItem(STORAGE_KEY);
      if (valid(t)) return t;
      sessionStorage.removeItem(STORAGE_KEY);
    } catch (e) { /* storage unavailable: log in every time */ }
    return null;
  }

  function start(t) {
    token = t;
    try { sessionStorage.setItem(STORAGE_KEY, t); } catch (e) { /* kept in memory only */ }
    $("login-view").hidden = true;
    $("app").hidden = false;
    $("session").hidden = false;
    document.body.dataset.state = "app";
    refresh();
    if (timer === null) {
      timer = setInterval(() => {
        if (!valid(token)) {
          logout("Your session expired: log in again.");
        } else if ($("auto-refresh").checked && !document.hidden) {
          refresh();
        }
      }, REFRESH_MS);
    }
  }

  function logout(message) {
    token = null;
    try { sessionStorage.removeItem(STORAGE_KEY); } catch (e) { /* nothing stored */ }
    if (timer !== null) {
      clearInterval(timer);
      timer = null;
    }
    for (const id of ["nodes", "channels", "presence", "history"]) $(id).tBodies[0].replaceChildren();
    $("app").hidden = true;
    $("session").hidden = true;
    $("login-view").hidden = false;
    document.body.dataset.state = "login";
    showText("login-error", message || "", "error");
    $("password").focus();
  }

  async function login(event) {
    event.preventDefault();
    const button = $("login");
    button.disabled = true;
    showText("login-error", "", "error");
    try {
      const resp = await fetch(`${ADMIN}/login`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ password: $("password").value }),
        cache: "no-store",
        credentials: "omit",
      });
      let body = {};
      try { body = await resp.json(); } catch (e) { /* not JSON */ }
      if (resp.ok && body.token) {
        $("password").value = "";
        start(body.token);
      } else if (resp.status === 429) {
        const wait = resp.headers.get("Retry-After") || "a few";
        showText("login-error", `Too many failed attempts: try again in ${wait} s.`, "error");
      } else if (resp.status === 401) {
        showText("login-error", "Wrong password.", "error");
      } else {
        showText("login-error", body.error || `Login failed (HTTP ${resp.status}).`, "error");
      }
    } catch (e) {
      showText("login-error", "The server cannot be reached.", "error");
    } finally {
      button.disabled = false;
    }
  }

  // -- the server API ----------------------------------------------------------------------

  async function call(method, params) {
    const resp = await fetch(`${API}/${method}`, {
      method: "POST",
      headers: { "Authorization": `token ${token}`, "Content-Type": "application/json" },
      body: typeof params === "string" ? params : JSON.stringify(params),
      cache: "no-store",
      credentials: "omit",
    });
    if (resp.status === 401) {
      logout("Your session expired: log in again.");
      throw new ApiError(401, "not authorized");
    }
    if (!resp.ok) throw new ApiError(resp.status, `HTTP ${resp.status}: ${(await resp.text()).trim()}`);
    const body = await resp.json();
    if (body.error) throw new ApiError(body.error.code, `${body.error.message} (code ${body.error.code})`);
    return body.result || {};
  }

  // -- rendering -----------------------------------------------------------------------------

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text === undefined || text === null ? "" : String(text);
    if (className) td.className = className;
    return td;
  }

  function row(testid, cells) {
    const tr = document.createElement("tr");
    tr.dataset.testid = testid;
    tr.append(...cells);
    return tr;
  }

  function json(value) {
    if (value === undefined || value === null) return "";
    const text = JSON.stringify(value);
    return text.length > 2000 ? `${text.slice(0, 2000)}…` : text;
  }

  function showText(id, text, state) {
    const node = $(id);
    node.textContent = text;
    node.className = text ? state : "";
    node.dataset.state = text ? state : "";
    node.hidden = !text;
  }

  function uptime(seconds) {
    let s = Math.max(0, Math.floor(Number(seconds) || 0));
    const parts = [];
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
      if (s >= size || parts.length) {
        parts.push(`${Math.floor(s / size)}${unit}`);
        s %= size;
      }
    }
    parts.push(`${s}s`);
    return parts.join(" ");
  }

  function renderNodes(nodes) {
    let clients = 0;
    let users = 0;
    const rows = nodes.map((n) => {
      clients += n.num_clients || 0;
      users += n.num_users || 0;
      const tr = row("node-row", [
        cell(n.name), cell(n.version), cell(uptime(n.uptime)), cell(n.num_clients, "num"),
        cell(n.num_users, "num"), cell(n.num_subs, "num"), cell(n.num_channels, "num"),
      ]);
      tr.dataset.node = n.name;
      return tr;
    });
    $("nodes").tBodies[0].replaceChildren(...rows);
    $("total-nodes").textContent = String(nodes.length);
    $("total-clients").textContent = String(clients);
    $("total-users").textContent = String(users);
  }

  function renderChannels(channels) {
    const entries = Object.entries(channels)
      .sort((a, b) => (b[1].num_clients - a[1].num_clients) || (a[0] < b[0] ? -1 : 1));
    const rows = entries.slice(0, MAX_CHANNEL_ROWS).map(([name, info]) => {
      const tr = row("channel-row", [cell(name), cell(info.num_clients, "num")]);
      tr.dataset.channel = name;
      tr.className = name === selected ? "clickable selected" : "clickable";
      tr.addEventListener("click", () => select(name));
      return tr;
    });
    $("channels").tBodies[0].replaceChildren(...rows);
    $("total-channels").textContent = String(entries.length);
    $("channels-note").textContent = entries.length > MAX_CHANNEL_ROWS
      ? `Showing ${MAX_CHANNEL_ROWS} of ${entries.length} channels: filter with a pattern.`
      : (entries.length ? "" : "No channel has subscribers.");
  }

  function unavailable(err, what) {
    return err.code === 108 ? `${what} is not enabled in this channel's namespace.` : err.message;
  }

  async function showChannel(channel) {
    const seq = ++detailSeq;
    $("selected-channel").textContent = channel;
    const [presence, history] = await Promise.allSettled([
      call("presence", { channel }),
      call("history", { channel, limit: HISTORY_LIMIT, reverse: true }),
    ]);
    if (seq !== detailSeq || !token) return;
    const presenceBody = $("presence").tBodies[0];
    if (presence.status === "fulfilled") {
      const entries = Object.values(presence.value.presence || {});
      presenceBody.replaceChildren(...entries.map((p) => {
        const tr = row("presence-row", [cell(p.client), cell(p.user), cell(json(p.conn_info), "json"),
          cell(json(p.chan_info), "json")]);
        tr.dataset.client = p.client;
        tr.dataset.user = p.user;
        return tr;
      }));
      $("presence-note").textContent = entries.length ? "" : "Nobody is present.";
    } else {
      presenceBody.replaceChildren();
      $("presence-note").textContent = unavailable(presence.reason, "Presence");
    }
    const historyBody = $("history").tBodies[0];
    if (history.status === "fulfilled") {
      const pubs = history.value.publications || [];
      historyBody.replaceChildren(...pubs.map((p) => {
        const tr = row("history-row", [cell(p.offset, "num"), cell(json(p.data), "json"), cell(json(p.tags), "json")]);
        tr.dataset.offset = String(p.offset || "");
        return tr;
      }));
      $("history-note").textContent = pubs.length ? "" : "No publications in history.";
    } else {
      historyBody.replaceChildren();
      $("history-note").textContent = unavailable(history.reason, "History");
    }
  }

  function select(channel) {
    selected = channel;
    $("channel-input").value = channel;
    if (!$("pub-channel").value) $("pub-channel").value = channel;
    for (const tr of $("channels").tBodies[0].rows) {
      tr.classList.toggle("selected", tr.dataset.channel === channel);
    }
    showChannel(channel).catch(showError);
  }

  function showError(err) {
    if (token) showText("error", err && err.message ? err.message : String(err), "error");
  }

  async function refresh() {
    if (!token || busy) return;
    busy = true;
    try {
      const [info, channels] = await Promise.all([
        call("info", {}),
        call("channels", pattern ? { pattern } : {}),
      ]);
      renderNodes(info.nodes || []);
      renderChannels(channels.channels || {});
      if (selected) await showChannel(selected);
      showText("error", "", "error");
      refreshes += 1;
      $("last-refresh").textContent = `updated ${new Date().toLocaleTimeString()}`;
      $("last-refresh").dataset.refreshes = String(refreshes);
    } catch (err) {
      showError(err);
    } finally {
      busy = false;
    }
  }

  // -- actions -------------------------------------------------------------------------------

  async function publish(event) {
    event.preventDefault();
    const channel = $("pub-channel").value.trim();
    const text = $("pub-data").value;
    try {
      JSON.parse(text);
    } catch (e) {
      showText("pub-result", `Data is not JSON: ${e.message}`, "error");
      return;
    }
    $("publish").disabled = true;
    try {
      // The data goes as typed (a valid JSON text), so numbers keep every digit.
      const result = await call("publish", `{"channel":${JSON.stringify(channel)},"data":${text}}`);
      showText("pub-result", result.offset ? `Published at offset ${result.offset}.` : "Published.", "ok");
      if (channel === selected) showChannel(selected).catch(showError);
    } catch (err) {
      showText("pub-result", err.message, "error");
    } finally {
      $("publish").disabled = false;
    }
  }

  async function disconnect(event) {
    event.preventDefault();
    const user = $("disc-user").value.trim();
    $("disconnect").disabled = true;
    try {
      await call("disconnect", { user });
      showText("disc-result", `Disconnected user ${JSON.stringify(user)}.`, "ok");
      refresh();
    } catch (err) {
      showText("disc-result", err.message, "error");
    } finally {
      $("disconnect").disabled = false;
    }
  }

  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout(""));
  $("refresh").addEventListener("click", () => refresh());
  $("publish-form").addEventListener("submit", publish);
  $("disconnect-form").addEventListener("submit", disconnect);
  $("channels-form").addEventListener("submit", (event) => {
    event.preventDefault();
    pattern = $("channel-filter").value.trim();
    refresh();
  });
  $("channel-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const channel = $("channel-input").value.trim();
    if (channel) select(channel);
  });

  const saved = storedToken();
  if (saved) {
    start(saved);
  } else {
    document.body.dataset.state = "login";
  }
})();
