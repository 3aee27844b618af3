"""Every way a message can be refused, as one exception family with stable reason codes.

The reason codes are what the daemon counts in ``/metrics``; they never change meaning.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A message or shard set that must be dropped. ``reason`` is a stable, countable code."""

    reason = "protocol"

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)
        self.detail = detail


class FrameTooLarge(ProtocolError):
    reason = "too_large"


class MalformedFrame(ProtocolError):
    """Not a single, complete msgpack object within the decoder's limits."""

    reason = "decode"


class SchemaViolation(ProtocolError):
    """Wrong keys, types, lengths or dtypes for the message type."""

    reason = "schema"


class NonCanonicalEncoding(ProtocolError):
    """Valid content, but not encoded the one canonical way (so the signature would be ambiguous)."""

    reason = "non_canonical"


class UnsupportedVersion(ProtocolError):
    """Another protocol version. ``header`` holds the frame's unverified v, type, sender,
    recipient and group, so a peer can answer an INVITE it cannot join."""

    reason = "version"

    def __init__(self, detail: str = "", header: dict[str, object] | None = None) -> None:
        super().__init__(detail)
        self.header = header or {}


class NotAdmitted(ProtocolError):
    """The sender is not on this peer's allowlist."""

    reason = "not_admitted"


class SenderMismatch(ProtocolError):
    """The envelope names a sender other than the authenticated connection's peer."""

    reason = "sender_mismatch"


class BadSignature(ProtocolError):
    reason = "signature"


class WrongRecipient(ProtocolError):
    reason = "recipient"


class StaleMessage(ProtocolError):
    """Timestamp outside the freshness window (too old, or too far in the future)."""

    reason = "stale"


class ReplayedMessage(ProtocolError):
    reason = "replay"


class ReplayTableFull(ProtocolError):
    """Too many (group, sender) pairs are being tracked; refused rather than forgetting."""

    reason = "overloaded"


class ShardError(ProtocolError):
    """A shard set that does not join: missing, duplicate, overlapping, wrong dtype or length."""

    reason = "shard"


#: Every reason code, for pre-registering metric labels.
REASONS: tuple[str, ...] = tuple(
    cls.reason
    for cls in (
        ProtocolError,
        FrameTooLarge,
        MalformedFrame,
        SchemaViolation,
        NonCanonicalEncoding,
        UnsupportedVersion,
        NotAdmitted,
        SenderMismatch,
        BadSignature,
        WrongRecipient,
        StaleMessage,
        ReplayedMessage,
        ReplayTableFull,
        ShardError,
    )
)
