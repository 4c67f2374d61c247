// Publications between clients of both SDK builds (tests/integration/test_js_protobuf.py).
// args.clients = [{who, token, protobuf}]: one client each (args.builds loads the builds),
// all subscribed to args.channel. Prints "ready" once all are subscribed, waits for
// {"cmd":"go"} (the test may publish from the server meanwhile), then runs args.steps in
// order: {who, data} is a publish by that client (data through encodeData), reported as
// "publish_result" {i, who, ok, result | error}. Then waits until every client received
// args.expect publications and prints one "received" {who, pubs} per client (pubView, bytes
// included for the Protobuf build). With args.historyBy, that client then reads the
// channel's whole history ("history" {offset, epoch, publications}).
import { args, main, newClient, newSub, nextCommand, once, out, errInfo, until, pubView, encodeData } from './common.mjs';

await main(async () => {
  const clients = [];
  for (const c of args.clients) {
    const client = newClient(c.who, { token: c.token }, { protobuf: Boolean(c.protobuf) });
    const sub = newSub(client, c.who, args.channel);
    const subscribed = once(sub, 'subscribed');
    sub.subscribe();
    client.connect();
    await subscribed;
    clients.push({ who: c.who, client, sub });
  }
  const byWho = Object.fromEntries(clients.map((c) => [c.who, c]));
  out('ready');
  const cmd = await nextCommand();
  if (cmd.cmd !== 'go') throw new Error(`unexpected command ${JSON.stringify(cmd)}`);

  for (const [i, step] of args.steps.entries()) {
    const { client, sub } = byWho[step.who];
    try {
      const result = await sub.publish(encodeData(client, step.data));
      out('publish_result', { i, who: step.who, ok: true, result });
    } catch (e) {
      out('publish_result', { i, who: step.who, ok: false, error: errInfo(e) });
    }
  }
  for (const c of clients) {
    await until(() => c.sub.received.length >= args.expect, `${args.expect} publications for ${c.who}`);
    out('received', { who: c.who, pubs: c.sub.received.map(pubView) });
  }
  if (args.historyBy) {
    const r = await byWho[args.historyBy].client.history(args.channel, { limit: -1 });
    out('history', { offset: r.offset, epoch: r.epoch, publications: r.publications.map(pubView) });
  }
  for (const c of clients) {
    out('state', { who: c.who, state: c.client.state });
    c.client.disconnect();
  }
});
