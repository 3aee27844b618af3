"""The ``gossiplearn`` command: one module per command in ``gossiplearn/commands``."""

from __future__ import annotations

import os
import sys

import typer

from gossiplearn.commands.allow import allow
from gossiplearn.commands.audit import audit
from gossiplearn.commands.evidence import evidence
from gossiplearn.commands.init import init
from gossiplearn.commands.keys import keys_app
from gossiplearn.commands.run import run
from gossiplearn.commands.sim import sim
from gossiplearn.commands.status import status
from gossiplearn.version import __version__

app = typer.Typer(
    name="gossiplearn",
    help="Decentralized gossip learning: secure group averaging, personalized heads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        typer.echo(f"gossiplearn {__version__}")
        raise typer.Exit()
    # "module:function" settings (model.factory, --data, ...) name the user's code: import it
    # from the current directory too, as `python -m` would, but after the installed packages
    # (a stray file here must not shadow a library).
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


app.command()(init)
app.command()(run)
app.command()(status)
app.command()(allow)
app.command()(evidence)
app.command()(audit)
app.add_typer(keys_app, name="keys")
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(sim)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
