"""Local TCP ports: what ``gossiplearn init`` and the simulation give the peers they set up.

A port is chosen now and bound later, when the daemon starts. Two things can take it in
between. One is any outgoing connection on the machine, since the kernel gives those ports
from its ephemeral range: a thousand test handshakes use a thousand of them. The other is a
second program choosing ports at the same moment (two test workers, two simulations). So the
ports come from below the ephemeral range, never twice from one process, and from a range of
one's own when ``GOSSIPLEARN_PORTS=LOW-HIGH`` is set: the test suite gives each of its
workers its own.
"""

from __future__ import annotations

import os
import random
import socket

PORTS_VARIABLE = "GOSSIPLEARN_PORTS"
#: Ports below the ephemeral range used when nothing else is said: 12,000 of them.
_DEFAULT_SPAN = 12_000
_EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
_cursor: int | None = None  # the next port this process tries


def port_range() -> tuple[int, int]:
    """The ports :func:`free_port` chooses from (inclusive).

    Raises ValueError, naming the variable, if ``GOSSIPLEARN_PORTS`` is not ``LOW-HIGH``
    with 1024 <= LOW <= HIGH <= 65535.
    """
    spec = os.environ.get(PORTS_VARIABLE)
    if spec:
        low_text, _, high_text = spec.partition("-")
        try:
            low, high = int(low_text), int(high_text)
        except ValueError:
            low, high = 0, -1
        if not 1024 <= low <= high <= 65535:
            raise ValueError(
                f"{PORTS_VARIABLE}={spec!r} is not a port range: give LOW-HIGH within "
                "1024-65535, e.g. 20000-25999"
            )
        return low, high
    try:
        with open(_EPHEMERAL_RANGE) as file:
            ephemeral_low = int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    high = max(ephemeral_low - 1, 1024 + _DEFAULT_SPAN)
    return high - _DEFAULT_SPAN + 1, high


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host``, from :func:`port_range`. One process walks the
    range from a random start, so it gives no port twice before it has given them all.

    Raises OSError if no port of the range is free.
    """
    global _cursor
    low, high = port_range()
    span = high - low + 1
    if _cursor is None or not low <= _cursor <= high:
        _cursor = random.randint(low, high)
    for step in range(span):
        port = low + (_cursor - low + step) % span
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _cursor = low + (port - low + 1) % span
        return port
    raise OSError(f"no free TCP port in {low}-{high} on {host} (set {PORTS_VARIABLE})")
