"""Hostile peers against live peer daemons, one scenario each, every one measured.

The scenarios (gossiplearn/testing/scenarios/hostile.py, floods.py and skew.py say what each
does and checks), with real daemons on 127.0.0.1 and attackers in the same process:
stranger (``--stranger`` streams of a peer nobody admits), forged (``--forged`` envelopes with
a wrong signature), plaintext (a plaintext-only transport), replayed (``--replayed`` frames of
a real round, again after ``--stale-wait`` s), garbage (``--garbage-rounds`` rounds with a
member sending garbage PARTs: round v3 strikes nobody for it, and group testing singles the
sender out), flood (``--streams`` round streams at once for ``--flood-seconds``), strangers
(``--handshakes`` stranger handshakes, without and with the per-IP limit) and skew (a
neighbour whose clock is ``--skew`` s ahead, for ``--skew-seconds``).

Prints one JSON line: streams_served_to_stranger, forged_accepted, replayed_accepted,
plaintext_connected, garbage_round_outcomes (honest members' outcomes by kind),
garbage_blamed (peers struck for a garbage round: 0), garbage_sender_backed_off_by (honest
peers that singled the garbage sender out), flood_rss_growth_mb, flood_rounds_completed,
flood_streams_refused, stranger_flood_handshakes, stranger_flood_slots_left,
stranger_flood_round_after_s, rate_limited_handshakes, clock_skew_estimate_error_ms,
clock_skew_flagged_after_s, clock_skew_invitations, crashes (a daemon's run task died or did
not stop, a handler raised something other than a framing or stream error, or a liveness
check failed), seconds; then each scenario's details (strangers, skew, stranger, forged,
plaintext, replayed, garbage, flood, handler_error_kinds). Exits 1 if any attack got through
or anything crashed.

Usage: python benchmarks/hostile_bench.py [--stranger 1000] [--forged 1000] [--replayed 1000]
       [--stale-wait 31] [--garbage-rounds 3] [--streams 1000] [--flood-seconds 60]
       [--handshakes 1000] [--skew 60] [--skew-seconds 30]
       [--dir DIR (default a temp dir)]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from gossiplearn.testing.scenarios.hostile import Options, run_hostile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stranger", type=int, default=1000, help="streams of the stranger")
    parser.add_argument("--forged", type=int, default=1000)
    parser.add_argument("--replayed", type=int, default=1000)
    parser.add_argument(
        "--stale-wait", type=float, default=31.0, help="replay again after this (<0: skip)"
    )
    parser.add_argument("--garbage-rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=1000, help="attack streams at once")
    parser.add_argument("--flood-seconds", type=float, default=60.0)
    parser.add_argument("--handshakes", type=int, default=1000, help="stranger handshakes")
    parser.add_argument("--skew", type=float, default=60.0, help="a neighbour's clock skew (s)")
    parser.add_argument("--skew-seconds", type=float, default=30.0)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.ERROR)
    logging.basicConfig(level=logging.ERROR, handlers=[stderr])
    # The attackers' own streams fail by the thousand, as they should, and libp2p logs each
    # (to stderr, whatever our handlers); it resets its logger when imported, so import first.
    import libp2p  # noqa: F401

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    options = Options(
        stranger=args.stranger,
        forged=args.forged,
        replayed=args.replayed,
        stale_wait_s=None if args.stale_wait < 0 else args.stale_wait,
        garbage_rounds=args.garbage_rounds,
        streams=args.streams,
        flood_seconds=args.flood_seconds,
        handshakes=args.handshakes,
        skew_s=args.skew,
        skew_seconds=args.skew_seconds,
    )
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as temp:
        report = run_hostile(args.dir or Path(temp), options)
    print(json.dumps(report.as_json()), flush=True)
    return 1 if report.crashes or report.breaches else 0


if __name__ == "__main__":
    sys.exit(main())
