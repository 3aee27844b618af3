"""Long-term Ed25519 identities, libp2p peer ids and key files.

The peer id is computed here without importing libp2p: it is the identity multihash of the
protobuf-encoded public key, in base58btc (the ``12D3KooW...`` form). A test proves it equal to
libp2p's own for many random seeds.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import nacl.exceptions
import nacl.signing

from gossiplearn.fileio import fsync_directory

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32

# libp2p's PublicKey protobuf: field 1 (KeyType, varint) = 1 (Ed25519), field 2 (bytes) of 32.
_PROTOBUF_ED25519_PREFIX = bytes([0x08, 0x01, 0x12, PUBLIC_KEY_BYTES])
# Identity multihash: code 0x00, then the digest length (36 bytes of protobuf).
_IDENTITY_MULTIHASH_PREFIX = bytes([0x00, len(_PROTOBUF_ED25519_PREFIX) + PUBLIC_KEY_BYTES])
_PEER_ID_PREFIX = _IDENTITY_MULTIHASH_PREFIX + _PROTOBUF_ED25519_PREFIX

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}

KEY_FILE_HEADER = "# gossiplearn identity: Ed25519 seed. Secret: never share or commit this file."
_KEY_FILE_FIELD = "ed25519-seed: "


class IdentityError(ValueError):
    """A peer id, public key or key file that cannot be used."""


class KeyFilePermissionError(IdentityError):
    """A key file readable by group or others; refused, like ssh refuses such keys."""


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, rem = divmod(n, 58)
        out.append(_B58_ALPHABET[rem])
    leading_zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading_zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for char in text:
        try:
            n = n * 58 + _B58_INDEX[char]
        except KeyError:
            raise IdentityError(f"invalid base58 character {char!r}") from None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    leading_ones = len(text) - len(text.lstrip("1"))
    return b"\0" * leading_ones + body


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer id (``12D3KooW...``) of a raw 32-byte Ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise IdentityError(f"an Ed25519 public key has 32 bytes, got {len(public_key)}")
    return b58encode(_PEER_ID_PREFIX + public_key)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The raw Ed25519 public key inside a peer id; only Ed25519 (inlined) ids are accepted."""
    if not isinstance(peer_id, str) or not 40 <= len(peer_id) <= 60:
        raise IdentityError(f"not an Ed25519 libp2p peer id: {peer_id!r}")
    raw = b58decode(peer_id)
    if len(raw) != len(_PEER_ID_PREFIX) + PUBLIC_KEY_BYTES or not raw.startswith(_PEER_ID_PREFIX):
        raise IdentityError(f"not an Ed25519 libp2p peer id: {peer_id!r}")
    return raw[len(_PEER_ID_PREFIX) :]


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair made from a 32-byte seed (the same key libp2p derives from it)."""

    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, bytes) or len(self.seed) != SEED_BYTES:
            raise IdentityError("an Ed25519 seed has exactly 32 bytes")
        signing_key = nacl.signing.SigningKey(self.seed)
        object.__setattr__(self, "_signing_key", signing_key)
        object.__setattr__(self, "public_key", bytes(signing_key.verify_key))

    public_key: bytes = field(init=False)

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(SEED_BYTES))

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """A detached 64-byte Ed25519 signature."""
        signing_key: nacl.signing.SigningKey = self._signing_key  # type: ignore[attr-defined]
        return signing_key.sign(message).signature


def write_key_file(path: str | os.PathLike[str], identity: Identity) -> Path:
    """Write the seed atomically with mode 0600; never overwrites an existing file.

    The seed goes to a temp file created 0600 in the same directory, is fsynced, then
    hard-linked into place: the link fails if ``path`` exists, so a concurrent writer or an
    earlier identity is never clobbered, and a crash leaves either nothing or the whole file.
    """
    path = Path(path)
    if path.exists():
        raise IdentityError(f"{path} already exists; refusing to overwrite an identity")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(f"{KEY_FILE_HEADER}\n{_KEY_FILE_FIELD}{identity.seed.hex()}\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise IdentityError(
                f"{path} already exists; refusing to overwrite an identity"
            ) from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return path


def load_key_file(path: str | os.PathLike[str]) -> Identity:
    """Load an identity, refusing a key file that group or others can read or write."""
    path = Path(path)
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise IdentityError(
            f"no identity key file at {path}: restore it from a backup (the peer id others "
            "admit is derived from it), or start a new identity with `gossiplearn init "
            "NEW_DIR` and have the other peers admit its id"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise IdentityError(f"{path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise KeyFilePermissionError(
            f"permissions {mode:04o} for '{path}' are too open: a private key must not be "
            f"accessible by others. Run: chmod 600 '{path}'"
        )
    text = path.read_text(encoding="ascii", errors="replace")
    for line in text.splitlines():
        if line.startswith(_KEY_FILE_FIELD):
            hex_seed = line[len(_KEY_FILE_FIELD) :].strip()
            try:
                seed = bytes.fromhex(hex_seed)
            except ValueError:
                break
            if len(seed) == SEED_BYTES:
                return Identity(seed)
            break
    raise IdentityError(f"{path} is not a gossiplearn identity key file")
