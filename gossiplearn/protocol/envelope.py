"""The signed envelope every gossiplearn message travels in.

Wire form: one msgpack map with keys in this fixed order::

    {v, type, sender, recipient, group, seq, ts, body, sig}

``sig`` is an Ed25519 signature by ``sender`` over the canonical msgpack encoding of the same
map without ``sig`` (binary type on, no ext types, minimal-size ints and lengths, fixed key
order). A receiver re-encodes what it decoded and refuses any frame that is not byte-identical
to that canonical form, so one message has exactly one signed encoding.

``sender`` and ``recipient`` are raw 32-byte Ed25519 public keys (a peer id is their
base58 form); ``group`` is a 16-byte group id, or empty for messages outside a round
(PEERS, STATUS); ``ts`` is the sender's clock in milliseconds.

Shard data is detached from the signature: for PART and REDUCED, ``sig`` covers the map with
the shard's ``data`` replaced by empty bytes, and the shard's ``digest`` (BLAKE3 of its data,
inside the signed part) binds the data; a receiver refuses data that does not match it. So
the signed map plus ``sig``, without the data, is a small :attr:`Envelope.statement` of what
the sender sent, verifiable by anyone (:func:`verify_statement`): members relay statements to
compare what they received, and two conflicting ones from one sender prove it equivocated.
Signing a digest also spares hashing a 1 MiB shard twice inside Ed25519.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

import msgpack

from gossiplearn.crypto.signing import Signer, verify
from gossiplearn.protocol.errors import (
    BadSignature,
    FrameTooLarge,
    MalformedFrame,
    NonCanonicalEncoding,
    NotAdmitted,
    ProtocolError,
    SchemaViolation,
    SenderMismatch,
    UnsupportedVersion,
    WrongRecipient,
)
from gossiplearn.protocol.messages import (
    KEY_BYTES,
    MAX_STATEMENT,
    MESSAGE_TYPES,
    SIGNATURE_BYTES,
    Message,
)
from gossiplearn.protocol.prescan import prescan
from gossiplearn.protocol.replay import ReplayGuard
from gossiplearn.protocol.schema import Record, binary, text, uint
from gossiplearn.protocol.shards import MAX_SHARD_BYTES, SHARD_SCHEMA, Shard, shard_digest

#: 3: round v3 (every round statement bound to its transcript, the READY roster agreement,
#: weights declared in ACCEPT, no WEIGHT_SHARE). Frames of any other version are refused
#: (reason "version") and never answered: nothing signed goes out for an unverified frame.
VERSION = 3
GROUP_ID_BYTES = 16
_SIG_KEY = msgpack.packb("sig")
_SIG_ENTRY_BYTES = len(_SIG_KEY) + 2 + SIGNATURE_BYTES  # "sig", bin8 header, 64 bytes


@dataclass(frozen=True)
class Limits:
    """Decoder limits, all checked before anything of that size is allocated."""

    #: A full shard plus generous room for the envelope and shard header.
    max_frame_bytes: int = MAX_SHARD_BYTES + 64 * 1024
    max_str_len: int = 256 * 1024
    max_array_len: int = 256
    max_map_len: int = 32
    #: Decoded objects per frame: a full PEERS message has ~1,300; bounds memory to ~100x this.
    max_objects: int = 4096
    #: Nesting: envelope > body > records > record > addrs is 5 deep.
    max_depth: int = 8


DEFAULT_LIMITS = Limits()

HEADER_SCHEMA = Record(
    "envelope",
    (
        ("v", uint()),
        ("type", text(16)),
        ("sender", binary(KEY_BYTES)),
        ("recipient", binary(KEY_BYTES)),
        ("group", binary(sizes=(0, GROUP_ID_BYTES))),
        ("seq", uint()),
        ("ts", uint()),
        ("body", lambda value, where: value),  # checked by the body's own schema, by type
        ("sig", binary(SIGNATURE_BYTES)),
    ),
)


@dataclass(frozen=True)
class Envelope:
    """A verified message. Only :func:`verify_envelope` and :func:`decode_envelope` make these
    from wire bytes, and only after every check has passed."""

    type: str
    sender: bytes
    recipient: bytes
    group: bytes
    seq: int
    ts: int
    body: Message
    sig: bytes
    v: int = VERSION
    #: The signed map and its signature without shard data: the frame itself for messages
    #: without a shard, a few hundred bytes for PART and REDUCED (see verify_statement).
    statement: bytes = field(default=b"", repr=False, compare=False)


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, strict_types=True)


def _signed_map(
    v: int, type_: str, sender: bytes, recipient: bytes, group: bytes, seq: int, ts: int, body: Any
) -> bytes:
    return _pack(
        {
            "v": v,
            "type": type_,
            "sender": sender,
            "recipient": recipient,
            "group": group,
            "seq": seq,
            "ts": ts,
            "body": body,
        }
    )


def _frame(signed: bytes, sig: bytes) -> bytes:
    # The 9-entry map is the 8-entry signed map with "sig" appended: same bytes after the
    # fixmap header (0x88 -> 0x89), so the frame costs one concatenation, not a re-encode.
    return b"\x89" + signed[1:] + _SIG_KEY + _pack(sig)


def _full_frame(
    v: int,
    type_: str,
    sender: bytes,
    recipient: bytes,
    group: bytes,
    seq: int,
    ts: int,
    body: Any,
    sig: bytes,
) -> bytes:
    """The frame of a message whose signature leaves shard data out: the full body + sig."""
    return _pack(
        {
            "v": v,
            "type": type_,
            "sender": sender,
            "recipient": recipient,
            "group": group,
            "seq": seq,
            "ts": ts,
            "body": body,
            "sig": sig,
        }
    )


def encode_envelope(
    signer: Signer,
    sender: bytes,
    recipient: bytes,
    body: Message,
    *,
    group: bytes = b"",
    seq: int,
    ts: int,
) -> bytes:
    """Sign ``body`` from ``sender`` (the signer's public key) to ``recipient``; returns the frame."""
    if len(group) not in (0, GROUP_ID_BYTES):
        raise ValueError(f"a group id has {GROUP_ID_BYTES} bytes (or none)")
    signed = _signed_map(
        VERSION, body.TYPE, sender, recipient, group, seq, ts, body.to_signed_wire()
    )
    sig = signer.sign(signed)
    if _detaches(body):
        fields = {"sender": sender, "recipient": recipient, "group": group, "seq": seq, "ts": ts}
        before, after = _data_frame_parts(fields, body, sig, signed)
        data = body.shard.data  # type: ignore[attr-defined]
        return b"".join((before, _bin_header(len(data)), data, after))
    return _frame(signed, sig)


def _detaches(body: Message) -> bool:
    return isinstance(getattr(body, "shard", None), Shard)


def _unpack(raw: bytes, limits: Limits) -> Any:
    prescan(raw, max_objects=limits.max_objects, max_depth=limits.max_depth)
    try:
        return msgpack.unpackb(
            raw,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=limits.max_frame_bytes,
            max_str_len=limits.max_str_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=0,
        )
    except (ValueError, TypeError, OverflowError, MemoryError, RecursionError) as exc:
        # msgpack raises ExtraData/FormatError/StackError (ValueError subclasses),
        # UnicodeDecodeError (a ValueError), TypeError for unhashable keys.
        raise MalformedFrame(type(exc).__name__) from None
    except Exception as exc:  # OutOfData and anything else the C decoder may raise
        raise MalformedFrame(type(exc).__name__) from None


def _decode(raw: bytes, limits: Limits, *, detached: bool) -> tuple[dict[str, Any], Message]:
    """Decode, check the header schema and version, and build the body (not yet trusted)."""
    decoded = _unpack(raw, limits)
    header = HEADER_SCHEMA.validate(decoded)
    if header["v"] != VERSION:
        raise UnsupportedVersion(
            f"version {header['v']}, this peer speaks {VERSION}",
            header={key: header[key] for key in ("v", "type", "sender", "recipient", "group")},
        )
    message_type = MESSAGE_TYPES.get(header["type"])
    if message_type is None:
        raise SchemaViolation(f"unknown message type {header['type'][:16]!r}")
    try:
        body = message_type.from_wire(header["body"], detached=detached)
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:  # a body dataclass refusing a combination of fields
        raise SchemaViolation(f"{header['type']}: {exc}") from None
    return header, body


def _signed(header: dict[str, Any], body: Message) -> bytes:
    return _signed_map(
        VERSION,
        body.TYPE,
        header["sender"],
        header["recipient"],
        header["group"],
        header["seq"],
        header["ts"],
        body.to_signed_wire(),
    )


def _envelope(header: dict[str, Any], body: Message, statement: bytes) -> Envelope:
    return Envelope(
        type=body.TYPE,
        sender=header["sender"],
        recipient=header["recipient"],
        group=header["group"],
        seq=header["seq"],
        ts=header["ts"],
        body=body,
        sig=header["sig"],
        statement=statement,
    )


def verify_envelope(
    raw: bytes | bytearray | memoryview,
    *,
    limits: Limits = DEFAULT_LIMITS,
    admitted: Container[bytes] | None = None,
    expected_sender: bytes | None = None,
) -> Envelope:
    """Checks that need no receiver state: size, decode, schema, version, canonical form,
    sender (admitted; equal to the authenticated connection's peer if given), signature, and
    shard data against its signed digest.

    Used on its own for the ACCEPT frames inside a ROSTER; :func:`decode_envelope` adds the
    recipient, freshness and replay checks.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise MalformedFrame(f"expected bytes, got {type(raw).__name__}")
    if len(raw) > limits.max_frame_bytes:
        raise FrameTooLarge(f"{len(raw)} bytes > limit {limits.max_frame_bytes}")
    raw = bytes(raw)
    header, body = _decode(raw, limits, detached=False)
    signed = _signed(header, body)
    statement = _frame(signed, header["sig"])
    if not (
        _canonical_detached(raw, header, body, signed) if _detaches(body) else raw == statement
    ):
        raise NonCanonicalEncoding("frame is not the canonical encoding of its content")

    sender = header["sender"]
    if admitted is not None and sender not in admitted:
        raise NotAdmitted("sender is not on the allowlist")
    if expected_sender is not None and sender != expected_sender:
        raise SenderMismatch("envelope sender differs from the connection's peer")
    if not verify(sender, signed, header["sig"]):
        raise BadSignature("signature does not verify against the sender's key")
    shard = getattr(body, "shard", None)
    if isinstance(shard, Shard) and shard_digest(shard.data) != shard.digest:
        raise BadSignature("shard data does not match its signed digest")
    return _envelope(header, body, statement)


def _bin_header(length: int) -> bytes:
    """msgpack's header of a bin of ``length`` bytes (bin8, bin16 or bin32)."""
    if length < 1 << 8:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 1 << 16:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


def _data_last(body: Message) -> bool:
    """Whether the shard's data is the last value of ``body``'s map (the shard is the body's
    last field, the data the shard's last), so the last value of the signed map (whose body
    is the last but one entry of the envelope, before "sig")."""
    fields = body.SCHEMA.fields
    return bool(fields) and fields[-1][0] == "shard" and SHARD_SCHEMA.fields[-1][0] == "data"


def _data_frame_parts(
    header: dict[str, Any], body: Message, sig: bytes, signed: bytes | None = None
) -> tuple[bytes, bytes]:
    """(A, B) with the canonical frame of a message with shard data = A + bin(len) + data + B,
    found without packing the data (a 1 MiB copy, and msgpack's buffer growth): the frame
    packed with empty data is A + bin8(0) + B, and packed with one byte of data it differs
    first at the length byte right after A.

    ``signed``: the signed map (shard data left out, :func:`_signed_map`), if at hand. When the
    data is the map's last value (PART and REDUCED: :func:`_data_last`), the frame with empty
    data is the statement ``_frame(signed, sig)``, whose bin8(0) is the signed map's last two
    bytes: A and B are cut from it, nothing packed again (memory mode, 1000 peers: 4% of a
    run packed these frames twice more per message, at its sender and its receiver)."""
    if signed is not None and _data_last(body) and signed.endswith(b"\xc4\x00"):
        statement = _frame(signed, sig)
        return statement[: len(signed) - 2], statement[len(signed) :]

    def frame_with(data: bytes) -> bytes:
        wire = body.to_wire()
        wire["shard"] = dict(wire["shard"], data=data)
        return _full_frame(
            VERSION,
            body.TYPE,
            header["sender"],
            header["recipient"],
            header["group"],
            header["seq"],
            header["ts"],
            wire,
            sig,
        )

    empty, one = frame_with(b""), frame_with(b"\x00")
    at = _first_difference(empty, one) - 1
    return empty[:at], empty[at + 2 :]


def _first_difference(a: bytes, b: bytes) -> int:
    """The first index where ``a`` and ``b`` differ (they must, within the shorter): by
    bisection on prefixes, compared in C (a Python loop over each byte cost 10% of a
    1000-peer memory-mode simulation)."""
    low, high = 0, min(len(a), len(b))  # a[:low] == b[:low]; they differ before high
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


def _canonical_detached(
    raw: bytes, header: dict[str, Any], body: Message, signed: bytes | None = None
) -> bool:
    """Whether ``raw`` is the canonical frame of a message with shard data (which the
    decoder read from between the two parts that must match)."""
    data = body.shard.data  # type: ignore[attr-defined]
    before, after = _data_frame_parts(header, body, header["sig"], signed)
    data_header = _bin_header(len(data))
    start = len(before) + len(data_header)
    end = start + len(data)
    return (
        len(raw) == end + len(after)
        and raw[: len(before)] == before
        and raw[len(before) : start] == data_header
        and raw[end:] == after
    )


def verify_statement(raw: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Check a statement (a message's signed map and signature, shard data left out, as in
    :attr:`Envelope.statement`): size, decode, schema, version, canonical form, signature.

    Returns its envelope; any shard in it is a :class:`~gossiplearn.protocol.shards.DetachedShard`.
    A statement proves what its sender signed, to anyone, at any time: no recipient,
    freshness or replay check applies.
    """
    if not isinstance(raw, bytes):
        raise MalformedFrame(f"expected bytes, got {type(raw).__name__}")
    if len(raw) > MAX_STATEMENT:
        raise FrameTooLarge(f"{len(raw)} bytes > statement limit {MAX_STATEMENT}")
    header, body = _decode(raw, limits, detached=True)
    signed = _signed(header, body)
    if raw != _frame(signed, header["sig"]):
        raise NonCanonicalEncoding("statement is not the canonical encoding of its content")
    if not verify(header["sender"], signed, header["sig"]):
        raise BadSignature("signature does not verify against the sender's key")
    return _envelope(header, body, raw)


def decode_envelope(
    raw: bytes | bytearray | memoryview,
    *,
    recipient: bytes,
    now_ms: int,
    replay: ReplayGuard,
    limits: Limits = DEFAULT_LIMITS,
    admitted: Container[bytes] | None = None,
    expected_sender: bytes | None = None,
) -> Envelope:
    """Decode and check a frame addressed to ``recipient``, in this order, cheapest first:
    size limit, decode (structural pre-scan, then msgpack with limits), schema, version, canonical form, sender admission,
    signature, recipient, freshness, replay.

    Every failure raises a :class:`ProtocolError` subclass; nothing else escapes. Only a frame
    that passes every check is recorded in ``replay``.
    """
    envelope = verify_envelope(
        raw, limits=limits, admitted=admitted, expected_sender=expected_sender
    )
    if envelope.recipient != recipient:
        raise WrongRecipient("addressed to another peer")
    replay.check_fresh(envelope.ts, now_ms)
    replay.check_and_record(envelope.group, envelope.sender, envelope.seq, now_ms)
    return envelope
