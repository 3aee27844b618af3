"""The ``gossiplearn`` command. Commands land one issue at a time; each says what it does."""

from __future__ import annotations

import sys

import typer

from gossiplearn import __version__

app = typer.Typer(
    name="gossiplearn",
    help="Decentralized gossip learning: secure group averaging, personalized heads.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        typer.echo(f"gossiplearn {__version__}")
        raise typer.Exit()


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sim() -> None:
    """Run a local multi-peer simulation (not yet available)."""
    typer.echo(
        "gossiplearn sim: not yet available. The foundation (crypto, wire format) is in place; "
        "the peer daemon and the simulation come next. Run `make test` to check the install."
    )


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
