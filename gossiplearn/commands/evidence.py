"""``gossiplearn evidence DIR``: the equivocation proofs a peer keeps, and clearing a peer.

A peer that catches another signing two conflicting messages in a round keeps the proof in
``DIR/evidence/`` and refuses that peer until an operator runs ``--clear PEER_ID`` (a running
daemon notices within seconds). Each proof is re-verified when listed.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import typer

from gossiplearn.commands.common import fail, peer_directory
from gossiplearn.crypto.identity import (
    IdentityError,
    peer_id_from_public_key,
    public_key_from_peer_id,
)
from gossiplearn.peer.evidence_store import EVIDENCE_DIR, ProofStore
from gossiplearn.protocol.evidence import describe_proof


def evidence(
    directory: Path = typer.Argument(..., help="The peer directory.", metavar="DIR"),
    clear: str | None = typer.Option(
        None, "--clear", help="Delete every proof against this peer id: stop refusing it."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the proofs as JSON."),
) -> None:
    """List the proofs that peers equivocated (signed conflicting messages), or clear one."""
    peer_directory(directory)
    store = ProofStore(directory / EVIDENCE_DIR)
    if clear is not None:
        try:
            peer = public_key_from_peer_id(clear)
        except IdentityError as exc:
            fail(f"--clear {clear!r}: not a peer id (12D3KooW...): {exc}", 2)
        removed = store.clear(peer)
        if not removed:
            fail(
                f"--clear {clear}: no proof against this peer in {store.directory}, so nothing "
                f"to clear; `gossiplearn evidence {directory}` lists the peers refused",
                2,
            )
        typer.echo(
            f"cleared {clear}: {removed} proof(s) deleted; a running daemon stops refusing it "
            "within seconds"
        )
        return
    proofs = []
    for stored in store.load():
        described = describe_proof(stored.proof)
        described["peer_id"] = peer_id_from_public_key(stored.peer)
        described["file"] = str(stored.path)
        described["kept_at"] = datetime.datetime.fromtimestamp(
            stored.path.stat().st_mtime, tz=datetime.UTC
        ).isoformat(timespec="seconds")
        proofs.append(described)
    if as_json:
        typer.echo(json.dumps(proofs, indent=2, sort_keys=True))
        return
    if not proofs:
        typer.echo(f"no equivocation proofs in {store.directory}")
        return
    for p in proofs:
        typer.echo(
            f"{p['peer_id']}  equivocated in group {str(p['group'])[:8]}: two different signed "
            f"{p['type']} messages ({p['kept_at']}; {p['file']})"
        )
    typer.echo(f"clear one with: gossiplearn evidence {directory} --clear PEER_ID")
