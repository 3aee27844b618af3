"""The libp2p host wrapper on 127.0.0.1: admission, the handler catch-all, framing limits."""

import pytest
import trio

from gossiplearn.crypto.identity import Identity
from gossiplearn.peer.net.framing import read_frame, write_frame
from gossiplearn.peer.net.host import Admission, Host, split_p2p_multiaddr

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


async def test_streams_beyond_the_per_peer_cap_are_reset_counted_and_freed_again():
    a, b, c = (Identity.generate() for _ in range(3))
    rejected: list[str] = []
    server = Host(
        a,
        LOOPBACK,
        Admission([b.public_key, c.public_key]),
        on_rejected=rejected.append,
        max_streams_per_peer=3,
    )
    release = trio.Event()
    started: list[bytes] = []

    async def hold(key: bytes, stream) -> None:
        started.append(await server.receive_frame(key, stream, 100))
        await release.wait()
        await server.send_frame(key, stream, b"done")

    server.handle("/gossiplearn/hold/1.0.0", hold)
    server.handle(ECHO, echo_for(server))
    async with server.run():
        client = Host(b, LOOPBACK, Admission([a.public_key]))
        other = Host(c, LOOPBACK, Admission([a.public_key]))
        async with client.run(), other.run():
            await client.connect(server.addrs()[0])
            await other.connect(server.addrs()[0])
            held = []
            for i in range(3):
                stream = await client.open_stream(a.public_key, "/gossiplearn/hold/1.0.0")
                await write_frame(stream, b"%d" % i)
                held.append(stream)
            with trio.fail_after(5):
                while len(started) < 3:
                    await trio.sleep(0.01)
            assert server.active_streams(b.public_key) == 3
            # The fourth, on any protocol, is reset before its payload is read.
            try:
                reply = await ask(client, a.public_key, b"one too many")
            except Exception:  # a reset, seen at open, write or read
                reply = None
            assert reply is None
            assert server.counters.capped_streams[b.public_key] == 1
            assert rejected == ["too_many_streams"]
            assert server.counters.bytes_in[b.public_key] == 3 * (4 + 1)  # only the held ones
            # Another peer has its own allowance.
            assert await ask(other, a.public_key, b"mine") == b"mine"
            # Once the held streams end, their slots are free again.
            release.set()
            for stream in held:
                assert await read_frame(stream, 100) == b"done"
                await stream.close()
            with trio.fail_after(5):
                while server.active_streams(b.public_key):
                    await trio.sleep(0.01)
            assert await ask(client, a.public_key, b"back") == b"back"
            assert server.counters.capped_streams[b.public_key] == 1


def test_the_stream_cap_must_allow_a_stream():
    with pytest.raises(ValueError):
        Host(Identity.generate(), LOOPBACK, Admission([]), max_streams_per_peer=0)
