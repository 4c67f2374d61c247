// Scenarios 2 and 6: subscribe (created before connect, so batched with it), report
// "ready", then print everything that arrives until the test sends {"cmd":"exit"}.
import { args, main, newClient, newSub, nextCommand, once, out } from './common.mjs';

await main(async () => {
  const client = newClient('a', { token: args.token, ...(args.clientOptions || {}) });
  const subs = args.channels.map((ch) => newSub(client, 'a', ch, args.subOptions || {}));
  const subscribed = subs.map((s) => once(s, 'subscribed'));
  for (const s of subs) s.subscribe();
  client.connect();
  await Promise.all(subscribed);
  out('ready');
  for (;;) {
    const cmd = await nextCommand(args.waitMs || 10000);
    if (cmd.cmd === 'exit') break;
    if (cmd.cmd === 'mark') out('mark', { name: cmd.name });
  }
  client.disconnect();
}, args.budgetMs || 20000);
