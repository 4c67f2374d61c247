// Scenario 3: subscriptions created before connect() go out in the connect frame.
import { args, main, newClient, newSub, once, out, errInfo, encodeData } from './common.mjs';

await main(async () => {
  const client = newClient('a', { token: args.token });
  const subs = args.subs.map(([ch, opts]) => newSub(client, 'a', ch, opts));
  const settled = subs.map((s) => Promise.race([
    once(s, 'subscribed').then(() => 'subscribed'),
    once(s, 'unsubscribed').then(() => 'unsubscribed'),
  ]));
  for (const s of subs) s.subscribe();
  client.connect();
  const outcome = await Promise.all(settled);
  out('settled', { outcome, states: subs.map((s) => s.state) });

  // The subscriptions work: a publication into one of them comes back.
  const target = subs.find((s) => s.channel === args.publishTo);
  const got = once(target, 'publication');
  try {
    await target.publish(encodeData(client, { batched: true }));
  } catch (e) {
    out('publish_error', errInfo(e));
    throw e;
  }
  await got;
  client.disconnect();
});
