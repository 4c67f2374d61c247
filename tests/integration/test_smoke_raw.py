from conftest import token


async def test_connect_subscribe_publish_roundtrip(server, peer_factory):
    peer = await peer_factory(server.url)
    reply = await peer.connect("alice")
    assert reply["connect"]["client"]
    assert reply["connect"]["ping"] == 25 and reply["connect"]["pong"] is True
    sub = await peer.call("subscribe", {"channel": "chat:1"})
    assert sub["subscribe"]["recoverable"] is True
    pub = await peer.call("publish", {"channel": "chat:1", "data": {"n": 1}})
    assert pub == {"id": 3, "publish": {}}
    # The publisher receives its own publication (before or after the reply: both are fine).
    while not any(m["push"].get("pub", {}).get("data") == {"n": 1} for m in peer.pushes):
        peer.pushes.append(await peer.recv())
    assert any("join" in m["push"] for m in peer.pushes)
    assert token("x")
