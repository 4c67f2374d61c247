"""A trivial server for measuring the load generator's own ceiling: it accepts any WebSocket
handshake and then writes pre-built push frames to every connection as fast as the
connections take them. `python -m bench.trivial PORT MESSAGES_PER_FRAME [protobuf]`"""

import asyncio
import sys

PORT, PER_FRAME = int(sys.argv[1]), int(sys.argv[2])
DATA = b'{"ts":1,"seq":1,"pad":"' + b"x" * 60 + b'"}'
MESSAGE = b'{"push":{"channel":"bench:s1","pub":{"data":' + DATA + b',"offset":1}}}'
PROTOBUF = sys.argv[3:] == ["protobuf"]
if PROTOBUF:  # the same publication as a varint-delimited Reply{push{channel, pub{data, offset}}}
    PUB = b"\x22" + bytes((len(DATA),)) + DATA + b"\x30\x01"
    PUSH = b"\x12\x08bench:s1\x22" + bytes((len(PUB),)) + PUB
    REPLY = b"\x22" + bytes((len(PUSH),)) + PUSH
    PAYLOAD = (bytes((len(REPLY),)) + REPLY) * PER_FRAME
else:
    PAYLOAD = b"\n".join([MESSAGE] * PER_FRAME)
OPCODE = 0x82 if PROTOBUF else 0x81
FRAME = (bytes((OPCODE, 126)) + len(PAYLOAD).to_bytes(2, "big") if len(PAYLOAD) >= 126 else bytes((OPCODE, len(PAYLOAD)))) + PAYLOAD
CHUNK = FRAME * max(1, 16384 // len(FRAME))


class Blaster(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.paused = False
        self.started = False
        self.buf = b""

    def data_received(self, data):
        if self.buf is None:  # after the handshake: any frame from the client starts the flood
            if not self.started:
                self.started = True
                asyncio.get_running_loop().call_soon(self.pump)
            return
        self.buf += data
        if b"\r\n\r\n" in self.buf:
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                 b"Sec-WebSocket-Accept: x\r\n\r\n")
            self.buf = None

    def pump(self):
        # A few chunks per turn, then yield: other connections (and handshakes) get their turn.
        for _ in range(4):
            if self.paused or self.transport.is_closing():
                return
            self.transport.write(CHUNK)
        asyncio.get_running_loop().call_soon(self.pump)

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        if self.started:
            asyncio.get_running_loop().call_soon(self.pump)


async def main():
    server = await asyncio.get_running_loop().create_server(Blaster, "127.0.0.1", PORT)
    await server.serve_forever()


if __name__ == "__main__":
    import uvloop
    uvloop.run(main())
