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
    kinds = [m["push"] for m in peer.pushes]
    assert any("join" in p for p in kinds)
    assert any(p.get("pub", {}).get("data") == {"n": 1} for p in kinds)
    assert token("x")
