"""Equivocation proofs kept on disk: ``DIR/evidence/PEER_ID-GROUP.proof``.

When a member is caught signing two conflicting messages (see protocol/evidence.py), the
daemon keeps the proof here and refuses that peer (no invitations, BUSY to its own) until an
operator clears it with ``gossiplearn evidence DIR --clear PEER_ID``, which deletes its proofs.
A running daemon notices within seconds; a restarted one re-reads (and re-verifies) them.

Each file is the encoded proof itself (msgpack, two signed statements): anyone can check it
with the sender's public key, which the peer id is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gossiplearn.crypto.identity import peer_id_from_public_key
from gossiplearn.fileio import write_atomically
from gossiplearn.protocol.evidence import InvalidProof, verify_proof

log = logging.getLogger("gossiplearn.evidence")

EVIDENCE_DIR = "evidence"
_SUFFIX = ".proof"


@dataclass(frozen=True)
class StoredProof:
    path: Path
    peer: bytes  # the equivocator's public key
    group: bytes
    proof: bytes


class ProofStore:
    """The proofs in one peer directory's ``evidence/``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def save(self, proof: bytes) -> StoredProof:
        """Verify and keep ``proof`` (idempotent per peer and group)."""
        proven = verify_proof(proof)
        peer, group = proven.peer, proven.group
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / f"{peer_id_from_public_key(peer)}-{group.hex()}{_SUFFIX}"
        write_atomically(path, lambda temp: temp.write_bytes(proof), 0o600)
        return StoredProof(path, peer, group, proof)

    def load(self) -> list[StoredProof]:
        """Every proof that still verifies; a file that does not is logged and skipped."""
        stored: list[StoredProof] = []
        if not self.directory.is_dir():
            return stored
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                proof = path.read_bytes()
                proven = verify_proof(proof)
            except (OSError, InvalidProof) as exc:
                log.warning("ignoring %s: not a valid equivocation proof (%s)", path, exc)
                continue
            stored.append(StoredProof(path, proven.peer, proven.group, proof))
        return stored

    def peers(self) -> set[bytes]:
        return {stored.peer for stored in self.load()}

    def clear(self, peer: bytes) -> int:
        """Delete every proof against ``peer``; how many there were."""
        removed = 0
        for stored in self.load():
            if stored.peer == peer:
                stored.path.unlink(missing_ok=True)
                removed += 1
        return removed
