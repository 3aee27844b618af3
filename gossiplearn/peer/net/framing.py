"""Length-prefixed frames over a libp2p stream, with the size limit checked before allocating.

libp2p's ``stream.read(n)`` returns whatever is buffered, and its ``read_exactly`` gives up
after 100 partial reads with a misleading error, so we read our own way: a 4-byte big-endian
length, refused if over the limit, then a loop filling exactly that many bytes. Large frames
are written in ~1 MiB chunks, which keeps yamux's flow control moving.
"""

from __future__ import annotations

from typing import Protocol

HEADER_BYTES = 4
WRITE_CHUNK = 1 << 20


class FramingError(Exception):
    """The peer broke framing: over-long length prefix, or EOF inside a frame."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class ByteStream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


async def _read_into(stream: ByteStream, buffer: bytearray, *, at_start: bool) -> bool:
    """Fill ``buffer``; False on a clean EOF before its first byte (only if ``at_start``)."""
    filled = 0
    view = memoryview(buffer)
    while filled < len(buffer):
        try:
            chunk = await stream.read(len(buffer) - filled)
        except EOFError:
            chunk = b""
        if not chunk:
            if at_start and filled == 0:
                return False
            raise FramingError("truncated", f"EOF after {filled} of {len(buffer)} bytes")
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    return True


async def read_frame(stream: ByteStream, max_bytes: int) -> bytes | None:
    """The next frame, or None at a clean end of stream. Never allocates over ``max_bytes``."""
    header = bytearray(HEADER_BYTES)
    if not await _read_into(stream, header, at_start=True):
        return None
    length = int.from_bytes(header, "big")
    if length > max_bytes:
        raise FramingError("too_large", f"declared {length} bytes > limit {max_bytes}")
    body = bytearray(length)
    await _read_into(stream, body, at_start=False)
    return bytes(body)


async def write_frame(stream: ByteStream, frame: bytes) -> None:
    await stream.write(len(frame).to_bytes(HEADER_BYTES, "big"))
    view = memoryview(frame)
    for start in range(0, len(frame), WRITE_CHUNK):
        await stream.write(bytes(view[start : start + WRITE_CHUNK]))
