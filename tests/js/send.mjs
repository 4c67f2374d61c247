// The client's send() (asynchronous messages to the application, no reply), then an RPC
// args.syncMethod on the same connection: the server handles a connection's commands in
// order, so its reply comes after the messages were handled. args.messages go through
// encodeData; the RPC's reply is printed as "sync".
import { args, main, newClient, once, out, decodeData, encodeData } from './common.mjs';

await main(async () => {
  const client = newClient('a', { token: args.token });
  const connected = once(client, 'connected');
  client.connect();
  await connected;
  for (const m of args.messages) {
    await client.send(encodeData(client, m));
  }
  const res = await client.rpc(args.syncMethod, encodeData(client, {}));
  out('sync', { data: decodeData(res.data) });
  out('state', { state: client.state });
  client.disconnect();
});
