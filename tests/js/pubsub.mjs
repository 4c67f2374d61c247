// Scenario 1: connect with a JWT, subscribe after connect, publish, receive own publication.
import { args, main, newClient, newSub, once, out, pubView, errInfo, encodeData } from './common.mjs';

await main(async () => {
  const client = newClient('a', { token: args.token });
  const connected = once(client, 'connected');
  client.connect();
  await connected;

  const sub = newSub(client, 'a', args.channel);
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  await subscribed;

  const gotPub = once(sub, 'publication');
  const res = await sub.publish(encodeData(client, args.data));
  out('publish_result', { result: res });
  const pub = await gotPub;
  out('own_publication', pubView(pub));

  // A publish the namespace does not allow is an error reply, not a disconnect.
  try {
    await client.publish('locked:x', encodeData(client, { no: true }));
    out('locked_publish', { ok: true });
  } catch (e) {
    out('locked_publish', { ok: false, error: errInfo(e) });
  }

  const disconnected = once(client, 'disconnected');
  client.disconnect();
  await disconnected;
});
