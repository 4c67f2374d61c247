// Scenario 9: how server disconnects and connect errors look to the SDK.
// args.cases = [{name, token, serverCloses}]: connect; with serverCloses the script reports
// "ready" once connected and the test closes the connection from the server side; with
// send, the client sends that message (client.send) once connected.
// Each case reports the SDK's disconnected code/reason and its state a while later.
import { args, main, newClient, once, out, sleep } from './common.mjs';

await main(async () => {
  for (const c of args.cases) {
    const client = newClient(c.name, { token: c.token });
    let connecting = 0;
    client.on('connecting', () => { connecting += 1; });
    const disconnected = once(client, 'disconnected', () => true, 6000);
    if (c.serverCloses) {
      const connected = once(client, 'connected');
      client.connect();
      const ctx = await connected;
      out('ready', { who: c.name, client: ctx.client });
    } else if (c.send !== undefined) {
      const connected = once(client, 'connected');
      client.connect();
      await connected;
      await client.send(c.send);
    } else {
      client.connect();
    }
    const d = await disconnected;
    // Longer than the reconnect backoff (maxReconnectDelay 400 ms): a reconnect would show.
    await sleep(600);
    out('case', { name: c.name, code: d.code, reason: d.reason, state: client.state, connecting });
    client.disconnect();
  }
}, 30000);
