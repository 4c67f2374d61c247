// Scenario 5: RPC calls; args.calls = [{name, method, data}], each printed as an "rpc" event.
import { args, main, newClient, once, out, errInfo, encodeData, decodeData } from './common.mjs';

await main(async () => {
  const client = newClient('a', { token: args.token });
  const connected = once(client, 'connected');
  client.connect();
  await connected;
  for (const call of args.calls) {
    try {
      const res = await client.rpc(call.method, encodeData(client, call.data));
      out('rpc', { name: call.name, ok: true, data: res.data === undefined ? '<undefined>' : decodeData(res.data) });
    } catch (e) {
      out('rpc', { name: call.name, ok: false, error: errInfo(e) });
    }
  }
  out('state', { state: client.state });
  client.disconnect();
});
