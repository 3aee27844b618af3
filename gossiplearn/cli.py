"""The ``gossiplearn`` command: one module per command in ``gossiplearn/commands``.

Every mistake on the command line ends as one line on stderr, ``gossiplearn: CAUSE; FIX``, and
exit code 2 (typer's boxed usage errors included); Ctrl-C ends a command with exit code 130 and
no traceback, even while its modules are still loading.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

try:  # Ctrl-C while the commands' modules load (a second or more on a busy machine)
    import typer

    from gossiplearn.commands.allow import allow
    from gossiplearn.commands.audit import audit
    from gossiplearn.commands.common import Command, Group
    from gossiplearn.commands.evidence import evidence
    from gossiplearn.commands.init import init
    from gossiplearn.commands.keys import keys_app
    from gossiplearn.commands.run import run
    from gossiplearn.commands.sim import sim
    from gossiplearn.commands.status import status
    from gossiplearn.version import __version__
except KeyboardInterrupt:
    sys.exit(130)

app = typer.Typer(
    name="gossiplearn",
    help="Decentralized gossip learning: secure group averaging, personalized heads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=Group,
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


app.command(cls=Command)(init)
app.command(cls=Command)(run)
app.command(cls=Command)(status)
app.command(cls=Command)(allow)
app.command(cls=Command)(evidence)
app.command(cls=Command)(audit)
app.add_typer(keys_app, name="keys")
app.command(
    cls=Command, context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)(sim)


def _usage_error(error: Any) -> NoReturn:
    """A command-line mistake typer found (an unknown option, a value of the wrong type, a
    missing argument) as one line naming it, and its exit code (2)."""
    code = int(getattr(error, "exit_code", 2))
    if type(error).__name__ == "NoArgsIsHelpError":  # `gossiplearn`, `gossiplearn keys`: help
        help_text = error.format_message()
        if help_text.strip():  # typer prints it itself when it renders help with rich
            typer.echo(help_text)
        sys.exit(code)
    message = " ".join(str(error.format_message()).split()).rstrip(".")
    context = getattr(error, "ctx", None)
    command = getattr(context, "command_path", None) or "gossiplearn"
    typer.echo(f"gossiplearn: {message}; see `{command} --help`", err=True)
    sys.exit(code)


def main() -> None:
    try:
        code = app(prog_name="gossiplearn", standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Abort:  # Ctrl-C inside a command (typer's name for it)
        sys.exit(130)
    except BrokenPipeError:  # `gossiplearn status --watch | head -1`: the reader is gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush at exit
        sys.exit(1)
    except Exception as error:
        if hasattr(error, "format_message") and hasattr(error, "exit_code"):  # click's errors
            _usage_error(error)
        raise
    _exit_now(code if isinstance(code, int) else 0)


def _exit_now(code: int) -> NoReturn:
    """Exit without the interpreter's teardown once a command has returned: what it made is
    on disk (written atomically) or printed, and tearing down torch, matplotlib and friends
    took another second after a simulation (`gossiplearn run` skips it too, on its stop)."""
    import logging

    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader is gone, as above
        os._exit(1)
    os._exit(code)


if __name__ == "__main__":
    main()
