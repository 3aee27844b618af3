"""The libp2p host wrapper on 127.0.0.1: admission, the handler catch-all, framing limits."""

import pytest
import trio

from gossiplearn.crypto.identity import Identity
from gossiplearn.peer.framing import read_frame, write_frame
from gossiplearn.peer.host import Admission, Host, split_p2p_multiaddr

pytestmark = pytest.mark.timeout(60)
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
ECHO = "/gossiplearn/test-echo/1.0.0"


def echo_for(host: Host):
    async def echo(key: bytes, stream) -> None:
        while (frame := await host.receive_frame(key, stream, 1 << 20)) is not None:
            await host.send_frame(key, stream, frame)
        await stream.close()

    return echo


async def ask(host: Host, key: bytes, payload: bytes) -> bytes | None:
    stream = await host.open_stream(key, ECHO)
    await write_frame(stream, payload)
    reply = await read_frame(stream, 1 << 20)
    await stream.close()
    return reply


async def test_admitted_peers_talk_and_others_are_refused_and_counted():
    a, b, stranger = (Identity.generate() for _ in range(3))
    server = Host(a, LOOPBACK, Admission([b.public_key]))
    server.handle(ECHO, echo_for(server))
    async with server.run():
        address = server.addrs()[0]
        assert split_p2p_multiaddr(address)[1] == a.peer_id
        async with Host(b, LOOPBACK, Admission([a.public_key])).run() as client:
            assert await client.connect(address) == a.public_key
            assert await ask(client, a.public_key, b"ping") == b"ping"
        async with Host(stranger, LOOPBACK, Admission([a.public_key])).run() as intruder:
            with pytest.raises(Exception):  # noqa: B017 - refused: reset, EOF or a closed connection
                await intruder.connect(address)
                reply = await ask(intruder, a.public_key, b"let me in")
                assert reply is None  # reached only if the connection survived: still refused
                raise ConnectionRefusedError
        with trio.fail_after(5):
            while server.counters.refused_connections < 1:
                await trio.sleep(0.01)
        assert server.counters.bytes_in[b.public_key] == 4 + len(b"ping")
        assert stranger.public_key not in server.counters.bytes_in  # nothing of its was read


async def test_an_exception_in_a_handler_resets_the_stream_but_keeps_the_host():
    a, b = Identity.generate(), Identity.generate()
    server = Host(a, LOOPBACK, Admission([b.public_key]))

    async def broken(key: bytes, stream) -> None:
        raise RuntimeError("bug in a handler")

    server.handle("/gossiplearn/broken/1.0.0", broken)
    server.handle(ECHO, echo_for(server))
    async with server.run(), Host(b, LOOPBACK, Admission([a.public_key])).run() as client:
        await client.connect(server.addrs()[0])
        stream = await client.open_stream(a.public_key, "/gossiplearn/broken/1.0.0")
        with pytest.raises(Exception):  # noqa: B017 - reset or EOF, depending on timing
            await write_frame(stream, b"x")
            frame = await read_frame(stream, 100)
            assert frame is None
            raise EOFError
        assert server.counters.handler_errors["/gossiplearn/broken/1.0.0"] == 1
        assert await ask(client, a.public_key, b"still alive") == b"still alive"


@pytest.mark.parametrize("bad", ["/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/1/p2p/notanid"])
def test_split_p2p_multiaddr_refuses_incomplete_addresses(bad):
    with pytest.raises(ValueError):
        split_p2p_multiaddr(bad)
