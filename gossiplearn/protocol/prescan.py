"""A structural pre-scan of msgpack bytes, run before the real decoder allocates anything.

msgpack's own limits bound each string, array and map, but not how many objects one frame
decodes into: a 1 MiB frame of nested empty arrays becomes ~64 MiB of Python lists. This scan
walks the encoding without building any object, counting objects and nesting depth, and
refuses a frame past either bound, or one that is truncated, has trailing bytes, or uses ext
types (which gossiplearn never sends). It reads each length header and skips the payload, so a
legitimate 1 MiB shard frame costs a few dozen steps.
"""

from __future__ import annotations

from gossiplearn.protocol.errors import MalformedFrame

# Type byte -> payload size in bytes, for fixed-size scalars.
_FIXED = {
    0xCA: 4, 0xCB: 8,  # float32/64
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,  # uint8..64
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,  # int8..64
}  # fmt: skip
# Type byte -> width of the length header, for str and bin.
_SIZED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
# Type byte -> (width of the count header, items per count) for arrays and maps.
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
_SINGLE_BYTE = frozenset({0xC0, 0xC2, 0xC3})  # nil, false, true


def prescan(raw: bytes, *, max_objects: int, max_depth: int) -> None:
    """Raise :class:`MalformedFrame` unless ``raw`` is exactly one msgpack object within bounds."""
    end = len(raw)
    pos = 0
    objects = 0
    remaining = [1]  # items still to read at each open nesting level
    while remaining:
        if remaining[-1] == 0:
            remaining.pop()
            continue
        remaining[-1] -= 1
        if pos >= end:
            raise MalformedFrame("truncated")
        objects += 1
        if objects > max_objects:
            raise MalformedFrame(f"more than {max_objects} objects")
        kind = raw[pos]
        pos += 1
        if kind <= 0x7F or kind >= 0xE0 or kind in _SINGLE_BYTE:
            continue
        if kind <= 0x8F:  # fixmap
            count = 2 * (kind & 0x0F)
        elif kind <= 0x9F:  # fixarray
            count = kind & 0x0F
        elif kind <= 0xBF:  # fixstr
            pos += kind & 0x1F
            continue
        elif kind in _FIXED:
            pos += _FIXED[kind]
            continue
        elif kind in _SIZED:
            width = _SIZED[kind]
            pos += width + int.from_bytes(raw[pos : pos + width], "big")
            continue
        elif kind in _CONTAINERS:
            width, per_item = _CONTAINERS[kind]
            count = per_item * int.from_bytes(raw[pos : pos + width], "big")
            pos += width
        else:
            raise MalformedFrame(f"type byte 0x{kind:02x} (ext or reserved) is not allowed")
        # Only containers reach here. remaining[0] is the top-level slot, not a container.
        if len(remaining) > max_depth:
            raise MalformedFrame(f"nested deeper than {max_depth}")
        remaining.append(count)
    if pos != end:
        raise MalformedFrame("truncated" if pos > end else "trailing bytes")
