"""Length-prefixed framing: exact reads over partial chunks, limits before allocation."""

import pytest

from gossiplearn.peer.net.framing import FramingError, read_frame, write_frame


class ChunkedStream:
    """A fake stream handing out at most ``chunk`` bytes per read, then EOF."""

    def __init__(self, data: bytes = b"", chunk: int = 3) -> None:
        self.data = bytearray(data)
        self.chunk = chunk
        self.written = bytearray()

    async def read(self, n: int | None = None) -> bytes:
        if not self.data:
            raise EOFError
        size = min(self.chunk, n or self.chunk, len(self.data))
        out, self.data = bytes(self.data[:size]), self.data[size:]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data


async def test_frames_round_trip_through_partial_reads():
    sink = ChunkedStream()
    frames = [b"", b"x", b"hello" * 1000, bytes(range(256))]
    for frame in frames:
        await write_frame(sink, frame)
    source = ChunkedStream(bytes(sink.written), chunk=7)
    got = []
    while (frame := await read_frame(source, 10_000)) is not None:
        got.append(frame)
    assert got == frames


async def test_declared_length_over_the_limit_is_refused_before_reading_it():
    source = ChunkedStream((2**31).to_bytes(4, "big") + b"abc")
    with pytest.raises(FramingError) as info:
        await read_frame(source, 1 << 20)
    assert info.value.reason == "too_large"
    assert bytes(source.data) == b"abc"  # the body was never read


@pytest.mark.parametrize("data", [b"\x00\x00", (10).to_bytes(4, "big") + b"short"])
async def test_eof_inside_a_frame_is_an_error(data):
    with pytest.raises(FramingError, match="truncated"):
        await read_frame(ChunkedStream(data), 100)


async def test_clean_eof_between_frames_is_none():
    assert await read_frame(ChunkedStream(b""), 100) is None
