// Scenario 4: presence, presenceStats and history through the SDK API.
// args.users: one client per entry, all subscribed to args.channel; the first one publishes
// args.publish payloads, then runs args.queries ({name, op, channel, opts}) in order.
// "$epoch" in opts.since.epoch stands for the channel's epoch from the subscribed event.
import { args, main, newClient, newSub, once, out, errInfo, until, pubView, scaled, encodeData, infoField } from './common.mjs';

function presenceView(clients) {
  const view = {};
  for (const [id, c] of Object.entries(clients)) {
    view[id] = { user: c.user, client: c.client, connInfo: infoField(c.connInfo) ?? null, chanInfo: infoField(c.chanInfo) ?? null };
  }
  return view;
}

async function run(client, q, epoch) {
  const opts = q.opts ? JSON.parse(JSON.stringify(q.opts)) : undefined;
  if (opts && opts.since && opts.since.epoch === '$epoch') opts.since.epoch = epoch;
  try {
    let result;
    if (q.op === 'history') {
      const r = await client.history(q.channel, opts);
      result = { offset: r.offset, epoch: r.epoch, publications: r.publications.map(pubView) };
    } else if (q.op === 'presence') {
      result = presenceView((await client.presence(q.channel)).clients);
    } else if (q.op === 'presenceStats') {
      result = await client.presenceStats(q.channel);
    } else {
      throw new Error(`unknown op ${q.op}`);
    }
    out('query', { name: q.name, ok: true, result });
  } catch (e) {
    out('query', { name: q.name, ok: false, error: errInfo(e) });
  }
}

await main(async () => {
  const clients = [];
  let epoch = '';
  for (const [i, [who, token]] of args.users.entries()) {
    const client = newClient(who, { token });
    const sub = newSub(client, who, args.channel);
    const subscribed = once(sub, 'subscribed');
    sub.subscribe();
    client.connect();
    const ctx = await subscribed;
    if (i === 0) epoch = ctx.streamPosition.epoch;
    clients.push({ who, client, sub });
  }
  const first = clients[0];
  for (const data of args.publish) {
    await first.sub.publish(encodeData(first.client, data));
  }
  await until(() => first.sub.received.length === args.publish.length, 'own publications');
  for (const q of args.queries) {
    await run(first.client, q, epoch);
  }

  // Presence follows connections: the last client leaves, the stats drop.
  const last = clients[clients.length - 1];
  last.client.disconnect();
  let stats = null;
  const deadline = Date.now() + scaled(3000);
  while (Date.now() < deadline) {
    stats = await first.sub.presenceStats();
    if (stats.numClients === clients.length - 1) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  out('stats_after_leave', { result: stats });
  for (const c of clients) c.client.disconnect();
});
