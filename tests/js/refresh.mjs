// Scenario 8: a short-lived connection token refreshed through getToken.
// Connects with args.token, getToken answers args.freshToken. After "ready" the test lets
// the first token expire; on {"cmd":"publish"} the client publishes and reports its own publication.
import { args, main, newClient, newSub, nextCommand, once, out, pubView, encodeData } from './common.mjs';

await main(async () => {
  const started = Date.now();
  const client = newClient('a', {
    token: args.token,
    getToken: async () => {
      out('get_token', { atMs: Date.now() - started });
      return args.freshToken;
    },
  });
  const sub = newSub(client, 'a', args.channel);
  const subscribed = once(sub, 'subscribed');
  const connected = once(client, 'connected');
  sub.subscribe();
  client.connect();
  const { client: clientId } = await connected;
  await subscribed;
  out('ready', { client: clientId });

  const cmd = await nextCommand(args.waitMs || 10000);
  if (cmd.cmd !== 'publish') throw new Error(`unexpected command ${JSON.stringify(cmd)}`);
  const got = once(sub, 'publication');
  await sub.publish(encodeData(client, { afterMs: Date.now() - started }));
  const pub = await got;
  out('own_publication', { ...pubView(pub), state: client.state, atMs: Date.now() - started });
  client.disconnect();
}, 20000);
