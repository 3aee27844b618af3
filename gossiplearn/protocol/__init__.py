"""Everything two peers agree on, sans-I/O: the signed wire format, message schemas, shards.

Nothing here imports trio, libp2p or torch: the same code runs in unit tests, the in-memory
simulation and the daemon.
"""

from gossiplearn.protocol.envelope import (
    DEFAULT_LIMITS,
    GROUP_ID_BYTES,
    VERSION,
    Envelope,
    Limits,
    decode_envelope,
    encode_envelope,
    verify_envelope,
    verify_statement,
)
from gossiplearn.protocol.errors import REASONS, ProtocolError
from gossiplearn.protocol.messages import (
    MESSAGE_TYPES,
    Abort,
    Accept,
    Busy,
    Cancel,
    Confirm,
    Invite,
    Message,
    Part,
    PeerRecord,
    Peers,
    Ready,
    Reduced,
    Roster,
    Status,
)
from gossiplearn.protocol.replay import ReplayGuard, SequenceCounter, sequence_start
from gossiplearn.protocol.shards import MAX_SHARD_BYTES, Shard, join_shards, split_shards

__all__ = [
    "DEFAULT_LIMITS",
    "GROUP_ID_BYTES",
    "MAX_SHARD_BYTES",
    "MESSAGE_TYPES",
    "REASONS",
    "VERSION",
    "Abort",
    "Accept",
    "Busy",
    "Cancel",
    "Confirm",
    "Envelope",
    "Invite",
    "Limits",
    "Message",
    "Part",
    "PeerRecord",
    "Peers",
    "ProtocolError",
    "Ready",
    "Reduced",
    "ReplayGuard",
    "Roster",
    "SequenceCounter",
    "Shard",
    "Status",
    "decode_envelope",
    "encode_envelope",
    "join_shards",
    "sequence_start",
    "split_shards",
    "verify_envelope",
    "verify_statement",
]
