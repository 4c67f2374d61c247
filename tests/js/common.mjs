// Shared helpers for the centrifuge-js scenario scripts driven by tests/integration/test_js_sdk.py.
//
// Contract with the Python side:
//   * argv[2] is a JSON object with the scenario's parameters (url, tokens, channels, ...).
//   * every observation is one JSON line on stdout: {"ev": "<kind>", "who": "<client tag>", ...}.
//   * the test can send JSON lines on stdin ({"cmd": "..."}); scripts wait for them with
//     nextCommand() when the server side has to act in the middle of a scenario.
//   * a script ends with {"ev":"done"} and exit code 0; a failure prints {"ev":"fatal"} and exits 1.
//
// Transports. args.transport ('websocket' by default, 'http_stream' or 'sse') picks the one
// every client uses: the HTTP ones with bidirectional emulation (the SDK POSTs its later
// commands to /emulation), on the same host and port as args.url.
//
// Protobuf. With args.protobuf the clients come from the SDK's Protobuf build
// ('centrifuge/build/protobuf', WebSocket subprotocol centrifuge-protobuf); a client can
// also ask for a build itself (newClient(who, options, { protobuf })), which a script that
// mixes both builds does (it passes args.builds = ['json', 'protobuf'] so both are loaded).
// The Protobuf build neither encodes nor decodes payloads: it takes and gives bytes. The
// scripts keep speaking JSON values, whatever the build: encodeData() makes the bytes to
// send ({"$bytes": [numbers]} stands for bytes that are not JSON), and every payload the
// SDK hands over is printed through decodeData(): JSON bytes as their value, other bytes
// as {"$bytes": [numbers]}.
import readline from 'node:readline';
import { Centrifuge as CentrifugeJson } from 'centrifuge';
import { EventSource } from 'eventsource';
import WebSocket from 'ws';

export const args = JSON.parse(process.argv[2] || '{}');

/** Whether clients use the Protobuf build unless a script says otherwise. */
export const PROTOBUF = Boolean(args.protobuf);
const CentrifugeProtobuf = PROTOBUF || (args.builds || []).includes('protobuf')
  ? (await import('centrifuge/build/protobuf')).Centrifuge
  : null;

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

// -- payloads ----------------------------------------------------------------------------------

const utf8 = new TextDecoder('utf-8', { fatal: true });

function isBytes(data) {
  return data instanceof Uint8Array || data instanceof ArrayBuffer;
}

/** The bytes of `data` (a plain array of numbers). */
export function bytesOf(data) {
  return Array.from(data instanceof ArrayBuffer ? new Uint8Array(data) : data);
}

/** A payload as the script reports it: a JSON value as it is; bytes (what the Protobuf build
 * gives) decoded as JSON text when they are that, else {"$bytes": [numbers]}. */
export function decodeData(data) {
  if (!isBytes(data)) return data;
  const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : data;
  try {
    return JSON.parse(utf8.decode(bytes));
  } catch {
    return { $bytes: bytesOf(bytes) };
  }
}

/** `value` as `client` takes a payload: the JSON build a JSON value; the Protobuf build bytes
 * (the JSON text of the value; {"$bytes": [numbers]} for raw bytes). */
export function encodeData(client, value) {
  const raw = value !== null && typeof value === 'object' && Array.isArray(value.$bytes);
  if (!client.protobuf) {
    if (raw) throw new Error('the JSON build cannot send raw bytes');
    return value;
  }
  if (raw) return Uint8Array.from(value.$bytes);
  return new TextEncoder().encode(JSON.stringify(value));
}

// -- SDK objects with every event recorded -------------------------------------------------

/** Protobuf has no "absent" for bytes: the SDK hands an empty conn_info/chan_info over as
 * empty bytes; reported as absent, as the JSON build would. */
export function infoField(data) {
  if (isBytes(data) && (data.byteLength ?? data.length) === 0) return undefined;
  return decodeData(data);
}

function clientInfo(info) {
  if (!info) return null;
  const out = { user: info.user, client: info.client };
  const connInfo = infoField(info.connInfo);
  const chanInfo = infoField(info.chanInfo);
  if (connInfo !== undefined) out.connInfo = connInfo;
  if (chanInfo !== undefined) out.chanInfo = chanInfo;
  return out;
}

/** A Centrifuge client on the `ws` package whose client-level events are printed with `who`.
 * The third argument's `protobuf` picks the SDK build (default: args.protobuf); `client.protobuf`
 * says which one it is. */
export function newClient(who, options = {}, { protobuf = PROTOBUF } = {}) {
  if (protobuf && CentrifugeProtobuf === null) throw new Error('the Protobuf build is not loaded (args.builds)');
  const Centrifuge = protobuf ? CentrifugeProtobuf : CentrifugeJson;
  const transport = args.transport || 'websocket';
  let endpoint = args.url;
  const emulation = {};
  if (transport !== 'websocket') {
    const base = new URL(args.url);
    base.protocol = 'http:';
    endpoint = [{ transport, endpoint: new URL(`/connection/${transport}`, base).toString() }];
    emulation.emulationEndpoint = new URL('/emulation', base).toString();
    emulation.eventsource = EventSource;
  }
  const client = new Centrifuge(endpoint, {
    websocket: WebSocket,
    ...emulation,
    // Reconnects happen within a test's time budget.
    minReconnectDelay: 100,
    maxReconnectDelay: 400,
    ...options,
  });
  client.protobuf = protobuf;
  client.on('connecting', (ctx) => out('connecting', { who, code: ctx.code, reason: ctx.reason }));
  client.on('connected', (ctx) => out('connected', { who, client: ctx.client, transport: ctx.transport, data: decodeData(ctx.data ?? null) }));
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
    data: decodeData(ctx.data ?? null),
  }));
  sub.on('unsubscribed', (ctx) => out('unsubscribed', { who, channel: ctx.channel, code: ctx.code, reason: ctx.reason }));
  sub.on('error', (ctx) => out('sub_error', { who, channel: ctx.channel, type: ctx.type, error: errInfo(ctx.error) }));
  sub.on('publication', (ctx) => {
    sub.received.push(ctx);
    out('publication', {
      who,
      channel: ctx.channel,
      data: decodeData(ctx.data),
      ...(isBytes(ctx.data) ? { bytes: bytesOf(ctx.data) } : {}),
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
  const view = { data: decodeData(p.data), offset: p.offset ?? null, info: clientInfo(p.info), tags: p.tags ?? null };
  if (isBytes(p.data)) view.bytes = bytesOf(p.data);
  return view;
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
