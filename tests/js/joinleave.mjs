// Scenario 7: join/leave between two clients. "a" subscribes first; "b" joins, then leaves.
import { args, main, newClient, newSub, once, out, until } from './common.mjs';

await main(async () => {
  const a = newClient('a', { token: args.tokenA });
  const subA = newSub(a, 'a', args.channel, { joinLeave: true });
  const joins = [];
  const leaves = [];
  subA.on('join', (ctx) => joins.push(ctx.info.client));
  subA.on('leave', (ctx) => leaves.push(ctx.info.client));
  const aSubscribed = once(subA, 'subscribed');
  subA.subscribe();
  a.connect();
  await aSubscribed;
  await until(() => joins.length === 1, 'own join of a');

  const b = newClient('b', { token: args.tokenB });
  const subB = newSub(b, 'b', args.channel, { joinLeave: true });
  const bConnected = once(b, 'connected');
  const bSubscribed = once(subB, 'subscribed');
  subB.subscribe();
  b.connect();
  const bId = (await bConnected).client;
  await bSubscribed;
  await until(() => joins.includes(bId), 'join of b seen by a');

  // b leaves by unsubscribing, comes back, then leaves by disconnecting.
  subB.unsubscribe();
  await until(() => leaves.length === 1, 'leave of b (unsubscribe)');
  const again = once(subB, 'subscribed');
  subB.subscribe();
  await again;
  await until(() => joins.length === 3, 'join of b again');
  b.disconnect();
  await until(() => leaves.length === 2, 'leave of b (disconnect)');
  out('b_client', { client: bId });
  a.disconnect();
});
