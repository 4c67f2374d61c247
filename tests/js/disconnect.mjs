// Scenario 9: how server disconnects and connect errors look to the SDK.
// args.cases = [{name, token, serverCloses}]: connect; with serverCloses the script reports
// "ready" once connected and the test closes the connection from the server side; with
// send, the client sends that message (client.send) once connected.
// Each case reports the SDK's disconnected code/reason, its state and how often it connected.
import { args, main, newClient, once, out, encodeData } from './common.mjs';

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
      await client.send(encodeData(client, c.send));
    } else {
      client.connect();
    }
    const d = await disconnected;
    // No waiting to see whether a reconnect comes: an SDK that will reconnect is in state
    // "connecting" (it emits "connecting", not "disconnected"), and it schedules reconnects
    // only from that state. State "disconnected" now is the SDK's own word that none comes.
    out('case', { name: c.name, code: d.code, reason: d.reason, state: client.state, connecting });
    client.disconnect();
  }
}, 30000);
