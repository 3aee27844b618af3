"""Stopping a simulation on SIGTERM, as Ctrl-C stops it, wherever it was started.

SIGTERM used to be re-raised as SIGINT, so that whatever handled Ctrl-C handled it too. A
script or CI job that starts ``gossiplearn sim ... &`` in the background runs it with SIGINT
ignored (POSIX shells do that for background jobs without job control), so the re-raised
signal was dropped and the run went on to the end. SIGTERM now has a handler of its own:
:class:`Terminated` is raised in the main thread, where KeyboardInterrupt would be, and every
mode stops its peers on the way out (process mode: ``finally`` stops the subprocesses; inproc
mode catches SIGTERM and SIGINT inside trio and stops its peers in order, see
:func:`trio_stop_on_signals`).
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType

#: The exit code of a run stopped by SIGTERM (128 + 15, as the shell reports a process killed
#: by it); Ctrl-C (SIGINT) gives 130.
SIGTERM_EXIT = 128 + signal.SIGTERM
SIGINT_EXIT = 128 + signal.SIGINT
#: How long the main thread has to act on SIGTERM or SIGINT while it trains in this process
#: (memory mode, the baselines) before :func:`honoured_within`'s watcher stops the run itself.
GRACE_S = 2.0


class Terminated(BaseException):
    """SIGTERM arrived during a simulation. A BaseException, like KeyboardInterrupt, so that
    no ``except Exception`` on the way swallows it."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside (in the main thread): the first SIGTERM raises :class:`Terminated`;
    later ones are ignored, so that the clean-up the first started (stopping peers) is not cut
    short. The previous handler is restored on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Terminated

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stop_signals_noted() -> Iterator[list[int]]:
    """For code that runs trio: while inside, SIGTERM is only noted (its number appended to
    the list), never raised into trio's machinery; :func:`trio_stop_on_signals` takes over
    inside the run. Outside the main thread, nothing is changed."""
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return

    def note(signum: int, frame: FrameType | None) -> None:
        noted.append(signum)

    previous = signal.signal(signal.SIGTERM, note)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGTERM, previous)


async def trio_stop_on_signals(noted: list[int], scope: object) -> None:
    """Inside a trio run: wait for SIGTERM or SIGINT (or find one already noted by
    :func:`stop_signals_noted`), note it and cancel ``scope`` (a trio.CancelScope: the run's
    waiting, after which it stops its peers in order rather than cancelling them)."""
    import trio

    if threading.current_thread() is not threading.main_thread():
        return
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        if not noted:
            async for signum in signals:
                noted.append(signum)
                break
    scope.cancel()  # type: ignore[attr-defined]


def raise_noted(noted: list[int]) -> None:
    """After the run: Terminated for SIGTERM, KeyboardInterrupt for SIGINT, else nothing."""
    if signal.SIGTERM in noted:
        raise Terminated
    if signal.SIGINT in noted:
        raise KeyboardInterrupt


@contextlib.contextmanager
def honoured_within(stuck: Callable[[int], None], grace_s: float = GRACE_S) -> Iterator[None]:
    """While inside (main thread, no trio run inside): a stop signal is honoured within
    ``grace_s`` even when the main thread cannot take it.

    Python runs a signal's handler in the main thread between bytecodes. A main thread inside
    one long C call (a user's trainer evaluating a whole test set through an LSTM in one
    forward pass, or any long torch or numpy call) takes SIGTERM and Ctrl-C only when that
    call returns: a memory-mode run once went on for more than 45 s after SIGTERM, then
    SIGINT. The C-level handler still runs at once and writes the signal's number to the
    wakeup fd (``signal.set_wakeup_fd``); a watcher thread reads it, and if the main thread
    has not left this block ``grace_s`` later, calls ``stuck(signum)``, which must end the
    process (write what is known, ``os._exit``). A SIGINT that is ignored (a background job)
    writes nothing and changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    stop_reader, stop_writer = socket.socketpair()
    writer.setblocking(False)
    left = threading.Event()

    def watch() -> None:
        while True:
            ready, _, _ = select.select([reader, stop_reader], [], [])
            if stop_reader in ready:
                return
            for signum in reader.recv(64):
                if signum in (signal.SIGTERM, signal.SIGINT) and not left.wait(grace_s):
                    stuck(signum)
                    return

    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="gossiplearn-signal-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        left.set()
        signal.set_wakeup_fd(previous)
        stop_writer.send(b"x")
        watcher.join()
        for end in (reader, writer, stop_reader, stop_writer):
            end.close()


def signal_name(signum: int) -> str:
    return "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
