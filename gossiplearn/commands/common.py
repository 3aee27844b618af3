"""Helpers shared by the commands: errors as one line, peer arguments and directories, and
help text as an operator reads it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from gossiplearn.crypto.identity import IdentityError, public_key_from_peer_id

#: The files every peer directory holds (gossiplearn.peer.config's CONFIG_FILE, IDENTITY_FILE).
PEER_FILES = ("config.toml", "identity.key")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``gossiplearn: message`` to stderr and exit with ``code``."""
    typer.echo(f"gossiplearn: {message}", err=True)
    sys.exit(code)


def parse_peer(text: str) -> tuple[str, str | None]:
    """(peer id, bootstrap multiaddr or None) from a peer id or a full multiaddr /.../p2p/ID;
    anything else ends the command with one line and exit code 2."""
    from gossiplearn.peer.config import dial_address_problem
    from gossiplearn.peer.net.host import split_p2p_multiaddr

    if text.startswith("/"):
        problem = dial_address_problem(text)
        if problem:
            fail(problem, 2)
        return split_p2p_multiaddr(text)[1], text
    try:
        public_key_from_peer_id(text)
    except (ValueError, IdentityError) as exc:
        fail(
            f"{text!r} is neither a peer id (12D3KooW...) nor a multiaddr ending in /p2p/ID "
            f"({exc})",
            2,
        )
    return text, None


def dialable(listen: str, peer_id: str) -> str:
    """The full address others dial for a listen multiaddr (0.0.0.0 noted as such)."""
    address = f"{listen}/p2p/{peer_id}"
    if "/ip4/0.0.0.0/" in listen or "/ip6/::/" in listen:
        return f"{address}  (replace the any-address with this machine's IP or name)"
    return address


def peer_directory(directory: Path) -> Path:
    """``directory`` if it is a peer directory (or at least holds one of its files); else the
    command ends with one line and exit code 2 (a wrong argument)."""
    if not directory.exists():
        fail(
            f"{directory} does not exist; give a peer directory (`gossiplearn init DIR` makes one)",
            2,
        )
    if not directory.is_dir():
        fail(
            f"{directory} is not a directory; give a peer directory (the one `gossiplearn init` "
            "made, holding config.toml and identity.key)",
            2,
        )
    if not any((directory / name).exists() for name in PEER_FILES):
        fail(
            f"{directory} is not a peer directory (no config.toml, no identity.key); create one "
            f"with `gossiplearn init DIR`, or give the directory `init` made",
            2,
        )
    return directory


# ---- help as an operator reads it ------------------------------------------------------------


def _tidy(param: Any) -> None:
    """No type tag on a flag (``--json <bool>``), the element type on a repeatable option or a
    variadic argument (``<str>``, not ``<list[str]>``), and an argument's name as is in the
    usage line (``DIR``, not ``{directory}``). Typer versions without these methods are left
    alone."""
    shown = getattr(param, "display_type_rich", None)
    if callable(shown):

        def display_type_rich(ctx: Any) -> str | None:
            if getattr(param, "is_flag", False) and getattr(param, "metavar", None) is None:
                return ""
            text = shown(ctx)
            if text and text.startswith("<list[") and text.endswith("]>"):
                return f"<{text[len('<list[') : -len(']>')]}>"
            return text

        param.display_type_rich = display_type_rich
    if callable(getattr(param, "_usage_display_name", None)):

        def usage_name() -> str:
            name = str(param.metavar or param.name.upper())
            name = name if param.required else f"[{name}]"
            return name + ("..." if param.nargs != 1 else "")

        param._usage_display_name = usage_name


class _Tidied:
    """Shows ``DIR`` and ``--json``, not ``{directory}`` and ``--json <bool>`` (see _tidy)."""

    params: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            _tidy(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            _tidy(option)
        return option


class Command(_Tidied, TyperCommand):
    """A command whose help shows ``DIR`` and ``--json`` (see :class:`_Tidied`)."""


class Group(_Tidied, TyperGroup):
    """The command groups' counterpart of :class:`Command`."""
