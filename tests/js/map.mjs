// Map subscriptions (centrifuge-js newMapSubscription): subscribe to args.channels as maps,
// print the subscribed context, the "sync" snapshot and every "update"; then act on the
// test's commands: publish/remove an entry through the subscription, reconnect (the map
// recovers from its position), mark, exit.
import { args, decodeData, encodeData, errInfo, main, newClient, nextCommand, once, out } from './common.mjs';

function entryView(e) {
  const view = { key: e.key, offset: e.offset ?? null };
  if (e.info) view.client = e.info.client;
  if (e.removed) view.removed = true;
  else view.data = decodeData(e.data);
  if (e.tags) view.tags = e.tags;
  return view;
}

await main(async () => {
  const client = newClient('a', { token: args.token, ...(args.clientOptions || {}) });
  const subs = {};
  for (const ch of args.channels) {
    // args.kinds[ch]: "clients" / "users" for map presence subscriptions (type 2 / 3).
    const kind = (args.kinds || {})[ch];
    const sub = kind === 'clients' ? client.newMapClientsSubscription(ch, args.subOptions || {})
      : kind === 'users' ? client.newMapUsersSubscription(ch, args.subOptions || {})
        : client.newMapSubscription(ch, args.subOptions || {});
    subs[ch] = sub;
    sub.on('subscribed', (ctx) => out('subscribed', {
      channel: ch, recovered: ctx.recovered, wasRecovering: ctx.wasRecovering,
      streamPosition: ctx.streamPosition ?? null,
    }));
    sub.on('subscribing', (ctx) => out('subscribing', { channel: ch, code: ctx.code }));
    sub.on('sync', (ctx) => out('sync', { channel: ch, entries: ctx.entries.map(entryView) }));
    sub.on('update', (ctx) => out('update', { channel: ch, ...entryView(ctx) }));
    sub.on('error', (ctx) => out('sub_error', { channel: ch, error: errInfo(ctx.error) }));
    sub.on('unsubscribed', (ctx) => out('unsubscribed', { channel: ch, code: ctx.code }));
  }
  const subscribed = Object.values(subs).map((s) => once(s, 'subscribed'));
  for (const s of Object.values(subs)) s.subscribe();
  client.connect();
  await Promise.all(subscribed);
  out('ready');
  for (;;) {
    const cmd = await nextCommand(args.waitMs || 10000);
    if (cmd.cmd === 'exit') break;
    if (cmd.cmd === 'mark') out('mark', { name: cmd.name });
    if (cmd.cmd === 'client') out('client', { id: client._client });
    if (cmd.cmd === 'stats') out('stats', { channel: cmd.channel, ...subs[cmd.channel].deltaStats() });
    if (cmd.cmd === 'subscribe_map' || cmd.cmd === 'unsubscribe_map') {
      // Join or leave a further map channel (e.g. to appear in its map presence).
      if (cmd.cmd === 'subscribe_map') {
        const extra = client.newMapSubscription(cmd.channel);
        const done = once(extra, 'subscribed');
        extra.subscribe();
        await done;
      } else {
        const extra = client.getSubscription(cmd.channel);
        extra.unsubscribe();
        client.removeSubscription(extra);
      }
      out('done_' + cmd.cmd, { channel: cmd.channel });
    }
    if (cmd.cmd === 'publish' || cmd.cmd === 'remove') {
      const sub = subs[cmd.channel];
      try {
        if (cmd.cmd === 'publish') await sub.publish(cmd.key, encodeData(client, cmd.data));
        else await sub.remove(cmd.key);
        out('written', { key: cmd.key });
      } catch (e) {
        out('write_error', { key: cmd.key, error: errInfo(e) });
      }
    }
    if (cmd.cmd === 'reconnect') {
      client.disconnect();
      out('disconnected');
      await nextCommand(args.waitMs || 10000);  // the test changes the map meanwhile
      const again = Object.values(subs).map((s) => once(s, 'subscribed'));
      client.connect();
      await Promise.all(again);
      out('resubscribed');
    }
  }
  client.disconnect();
}, args.budgetMs || 20000);
