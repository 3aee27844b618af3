"""``gossiplearn evidence``: the proofs a peer keeps (peer/evidence_store.py), listed and cleared."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from gossiplearn.cli import app
from gossiplearn.crypto.identity import Identity, write_key_file
from gossiplearn.peer.evidence_store import EVIDENCE_DIR, ProofStore
from gossiplearn.protocol.envelope import encode_envelope, verify_envelope
from gossiplearn.protocol.evidence import EquivocationProof
from gossiplearn.protocol.messages import Confirm

runner = CliRunner()
CHEAT, ALICE, BOB = (Identity(bytes([i]) * 32) for i in (9, 1, 2))
GROUP = b"\x21" * 16
TRANSCRIPT = b"\x5e" * 32


def proof_against(cheat: Identity) -> bytes:
    """Two CONFIRMs ``cheat`` signed for one round (one transcript), with different digests:
    the result agreement, told differently to two members."""
    statements = [
        verify_envelope(
            encode_envelope(
                cheat,
                cheat.public_key,
                to.public_key,
                Confirm(TRANSCRIPT, bytes([value]) * 32, ()),
                group=GROUP,
                seq=value,
                ts=1,
            )
        ).statement
        for to, value in ((ALICE, 5), (BOB, 6))
    ]
    return EquivocationProof(*statements).encode()


def peer_directory(directory: Path) -> Path:
    """``directory`` as `gossiplearn init` leaves it, as far as `evidence` looks."""
    write_key_file(directory / "identity.key", Identity.generate())
    return directory


def test_a_kept_proof_is_private_listed_and_cleared(tmp_path: Path) -> None:
    peer_directory(tmp_path)
    store = ProofStore(tmp_path / EVIDENCE_DIR)
    stored = store.save(proof_against(CHEAT))
    assert stored.peer == CHEAT.public_key and stored.group == GROUP
    assert stored.path.name == f"{CHEAT.peer_id}-{GROUP.hex()}.proof"
    assert os.stat(stored.path).st_mode & 0o777 == 0o600
    assert store.save(proof_against(CHEAT)).path == stored.path  # one file per peer and group

    listed = runner.invoke(app, ["evidence", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[0].startswith(
        f"{CHEAT.peer_id}  equivocated in group {GROUP.hex()[:8]}: two different signed "
        "CONFIRM messages ("
    )
    as_json = json.loads(runner.invoke(app, ["evidence", str(tmp_path), "--json"]).output)
    assert [p["peer_id"] for p in as_json] == [CHEAT.peer_id]

    cleared = runner.invoke(app, ["evidence", str(tmp_path), "--clear", CHEAT.peer_id])
    assert cleared.exit_code == 0
    assert cleared.output.startswith(f"cleared {CHEAT.peer_id}: 1 proof(s) deleted")
    assert store.load() == [] and not stored.path.exists()
    again = runner.invoke(app, ["evidence", str(tmp_path), "--clear", CHEAT.peer_id])
    assert again.exit_code == 2
    assert again.output == (
        f"gossiplearn: --clear {CHEAT.peer_id}: no proof against this peer in "
        f"{store.directory}, so nothing to clear; `gossiplearn evidence {tmp_path}` lists the "
        "peers refused\n"
    )


def test_a_file_that_is_not_a_proof_is_skipped(tmp_path: Path) -> None:
    store = ProofStore(tmp_path / EVIDENCE_DIR)
    store.save(proof_against(CHEAT))
    (store.directory / "forged.proof").write_bytes(b"\x93\xa1x\xc4\x00\xc4\x00")
    assert [s.peer for s in store.load()] == [CHEAT.public_key]


def test_clear_needs_a_peer_id(tmp_path: Path) -> None:
    peer_directory(tmp_path)
    result = runner.invoke(app, ["evidence", str(tmp_path), "--clear", "nonsense"])
    assert result.exit_code == 2
    assert "--clear 'nonsense': not a peer id (12D3KooW...)" in result.output


def test_evidence_of_a_missing_directory_says_how_to_make_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evidence", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.output == (
        f"gossiplearn: {tmp_path / 'nope'} does not exist; give a peer directory "
        "(`gossiplearn init DIR` makes one)\n"
    )
