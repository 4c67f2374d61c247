// Shared helpers for the centrifuge-js scenario scripts driven by tests/integration/test_js_sdk.py.
//
// Contract with the Python side:
//   * argv[2] is a JSON object with the scenario's parameters (url, tokens, channels, ...).
//   * every observation is one JSON line on stdout: {"ev": "<kind>", "who": "<client tag>", ...}.
//   * the test can send JSON lines on stdin ({"cmd": "..."}); scripts wait for them with
//     nextCommand() when the server side has to act in the middle of a scenario.
//   * a script ends with {"ev":"done"} and exit code 0; a failure prints {"ev":"fatal"} and exits 1.
import readline from 'node:readline';
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

export const args = JSON.parse(process.argv[2] || '{}');

/** LIVEGATE_TEST_TIME_SCALE (see tests/conftest.py; the Python side passes it on): every
 * timeout in the scripts is multiplied by it, so a loaded machine gives them more time. */
export const TIME_SCALE = Number(process.env.LIVEGATE_TEST_TIME_SCALE || '1') || 1;

/** `ms` of test time in milliseconds of wall-clock time. */
export function scaled(ms) {
  return Math.round(ms * TIME_SCALE);
}

export function out(ev, fields = {}) {
  process.stdout.write(JSON.stringify({ ev, ...fields }) + '\n');
}

export function errInfo(e) {
  if (e && typeof e === 'object' && 'code' in e) {
    return { code: e.code, message: e.message };
  }
  return { code: null, message: String(e && e.message ? e.message : e) };
}

// -- commands from the test on stdin -----------------------------------------------------

const commands = [];
const commandWaiters = [];
let stdinReader = null;

function startStdin() {
  if (stdinReader !== null) return;
  stdinReader = readline.createInterface({ input: process.stdin });
  stdinReader.on('line', (line) => {
    if (!line.trim()) return;
    const cmd = JSON.parse(line);
    const waiter = commandWaiters.shift();
    if (waiter) waiter(cmd);
    else commands.push(cmd);
  });
}

/** The next command the test sent on stdin (a parsed JSON object); the timeout is scaled. */
export function nextCommand(timeoutMs = 8000) {
  startStdin();
  if (commands.length) return Promise.resolve(commands.shift());
  return withTimeout(new Promise((resolve) => commandWaiters.push(resolve)), timeoutMs, 'command from test');
}

// -- waiting -------------------------------------------------------------------------------

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** `promise`, or a rejection after `ms` of test time (scaled). */
export function withTimeout(promise, ms, what) {
  ms = scaled(ms);
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms}ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves with the first `event` of `emitter` whose context satisfies `pred`. */
export function once(emitter, event, pred = () => true, timeoutMs = 5000) {
  return withTimeout(new Promise((resolve) => {
    const handler = (ctx) => {
      if (pred(ctx)) {
        emitter.off(event, handler);
        resolve(ctx);
      }
    };
    emitter.on(event, handler);
  }), timeoutMs, `${event} event`);
}

/** Resolves once `cond()` is true (polled; the timeout is scaled). */
export async function until(cond, what, timeoutMs = 5000) {
  timeoutMs = scaled(timeoutMs);
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timeout after ${timeoutMs}ms waiting for ${what}`);
    await sleep(10);
  }
}

// -- SDK objects with every event recorded -------------------------------------------------

function clientInfo(info) {
  if (!info) return null;
  const out = { user: info.user, client: info.client };
  if (info.connInfo !== undefined) out.connInfo = info.connInfo;
  if (info.chanInfo !== undefined) out.chanInfo = info.chanInfo;
  return out;
}

/** A Centrifuge client on the `ws` package whose client-level events are printed with `who`. */
export function newClient(who, options = {}) {
  const client = new Centrifuge(args.url, {
    websocket: WebSocket,
    // Reconnects happen within a test's time budget.
    minReconnectDelay: 100,
    maxReconnectDelay: 400,
    ...options,
  });
  client.on('connecting', (ctx) => out('connecting', { who, code: ctx.code, reason: ctx.reason }));
  client.on('connected', (ctx) => out('connected', { who, client: ctx.client, transport: ctx.transport, data: ctx.data ?? null }));
  client.on('disconnected', (ctx) => out('disconnected', { who, code: ctx.code, reason: ctx.reason }));
  client.on('error', (ctx) => out('error', { who, type: ctx.type, error: errInfo(ctx.error) }));
  return client;
}

/** A client-side subscription whose events are printed with `who`; publications are also
 * collected in `sub.received` (in delivery order). */
export function newSub(client, who, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  sub.received = [];
  sub.on('subscribing', (ctx) => out('subscribing', { who, channel: ctx.channel, code: ctx.code, reason: ctx.reason }));
  sub.on('subscribed', (ctx) => out('subscribed', {
    who,
    channel: ctx.channel,
    recoverable: ctx.recoverable,
    positioned: ctx.positioned,
    streamPosition: ctx.streamPosition ?? null,
    wasRecovering: ctx.wasRecovering,
    recovered: ctx.recovered,
    hasRecoveredPublications: ctx.hasRecoveredPublications,
    data: ctx.data ?? null,
  }));
  sub.on('unsubscribed', (ctx) => out('unsubscribed', { who, channel: ctx.channel, code: ctx.code, reason: ctx.reason }));
  sub.on('error', (ctx) => out('sub_error', { who, channel: ctx.channel, type: ctx.type, error: errInfo(ctx.error) }));
  sub.on('publication', (ctx) => {
    sub.received.push(ctx);
    out('publication', {
      who,
      channel: ctx.channel,
      data: ctx.data,
      offset: ctx.offset ?? null,
      info: clientInfo(ctx.info),
      tags: ctx.tags ?? null,
    });
  });
  sub.on('join', (ctx) => out('join', { who, channel: ctx.channel, info: clientInfo(ctx.info) }));
  sub.on('leave', (ctx) => out('leave', { who, channel: ctx.channel, info: clientInfo(ctx.info) }));
  return sub;
}

export function pubView(p) {
  return { data: p.data, offset: p.offset ?? null, info: clientInfo(p.info), tags: p.tags ?? null };
}

/** Runs the scenario; prints done/fatal and exits (the stdin reader would keep Node alive).
 * The budget is scaled. */
export async function main(fn, budgetMs = 15000) {
  budgetMs = scaled(budgetMs);
  const guard = setTimeout(() => {
    out('fatal', { error: `script budget of ${budgetMs}ms exceeded` });
    process.exit(2);
  }, budgetMs);
  try {
    await fn();
    clearTimeout(guard);
    out('done');
    process.exit(0);
  } catch (e) {
    clearTimeout(guard);
    out('fatal', { error: String(e && e.stack ? e.stack : e), detail: errInfo(e) });
    process.exit(1);
  }
}
