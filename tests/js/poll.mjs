// Shared poll subscriptions (centrifuge-js newSharedPollSubscription): subscribe to
// args.channel, sign tracked keys with args.secret for args.user (as an application backend
// would: HMAC-SHA256 over iat NUL exp NUL user NUL channel NUL sha256hex(keys joined by NUL)),
// print every "update", and act on the test's commands: track/untrack keys, reconnect, exit.
import crypto from 'node:crypto';
import { args, decodeData, errInfo, main, newClient, nextCommand, once, out } from './common.mjs';

function sign(keys) {
  const now = Math.floor(Date.now() / 1000);
  const exp = now + (args.signatureTtl ?? 3600);
  const keysHash = crypto.createHash('sha256').update(keys.join('\x00')).digest('hex');
  const payload = `${now}\x00${exp}\x00${args.user}\x00${args.channel}\x00${keysHash}`;
  const mac = crypto.createHmac('sha256', args.badSecret ? 'wrong' : args.secret).update(payload).digest('hex');
  return `${now}:${exp}:${mac}`;
}

await main(async () => {
  const client = newClient('a', { token: args.token });
  const sub = client.newSharedPollSubscription(args.channel, {
    getSignature: async (ctx) => ({ keys: ctx.keys, signature: sign(ctx.keys) }),
    ...(args.delta ? { delta: args.delta } : {}),
  });
  sub.on('subscribed', (ctx) => out('subscribed', { channel: ctx.channel }));
  sub.on('subscribing', (ctx) => out('subscribing', { code: ctx.code }));
  sub.on('update', (ctx) => {
    const view = { key: ctx.key, version: ctx.version ?? null };
    if (ctx.removed) view.removed = true;
    else view.data = decodeData(ctx.data);
    out('update', view);
  });
  sub.on('error', (ctx) => out('sub_error', { type: ctx.type, error: errInfo(ctx.error) }));
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  client.connect();
  await subscribed;
  out('ready');
  for (;;) {
    const cmd = await nextCommand(args.waitMs || 10000);
    if (cmd.cmd === 'exit') break;
    if (cmd.cmd === 'track') sub.track(cmd.keys);
    if (cmd.cmd === 'untrack') sub.untrack(cmd.keys);
    if (cmd.cmd === 'mark') out('mark', { name: cmd.name });
    if (cmd.cmd === 'stats') out('stats', sub.deltaStats());
    if (cmd.cmd === 'reconnect') {
      client.disconnect();
      const again = once(sub, 'subscribed');
      client.connect();
      await again;
      out('resubscribed');
    }
  }
  client.disconnect();
}, args.budgetMs || 20000);
