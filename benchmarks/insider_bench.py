"""One insider against 4 honest daemons, per attack class: honest rounds/min under attack /
control, alternated in one run.

Classes (``gossiplearn.testing.scenarios.insider.ATTACKS``, the scenario): framing (old
statements relayed under a reused group id), roster_order (a reordered roster), spoiling
(garbage parts nobody can be blamed for), holder (round v2's: invite, roster, silence),
bulk_starvation (33 stalled bulk connections per partner of one honest peer, each naming its
round in progress; the insider's own rounds honest). Each run is
``--seconds`` of real daemons on 127.0.0.1; the control (the insider runs honest code) is run
before each class and the ratio taken against the mean of the controls. Target: >= 0.6 for
every class, and 0 proofs against honest peers.

Prints one JSON line: {"seconds", "interval_s", "control_rounds_per_min", "<class>":
{"rounds_per_min", "ratio", "proofs_against_honest", "insider_blocked_by", "honest_aborts"}}.

Daemons run the default config (round.interval_s 10 s) unless ``--interval`` says otherwise;
a short interval (0.5 s: hundreds of rounds a minute) makes every held second cost more.

Usage: python benchmarks/insider_bench.py [--seconds 60] [--interval 10]
       [--classes framing,roster_order,spoiling,holder,bulk_starvation]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from gossiplearn.testing.scenarios.insider import ATTACKS, insider_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--classes", default=",".join(a for a in ATTACKS if a != "none"))
    parser.add_argument(
        "--interval",
        type=float,
        default=10.0,
        help="round.interval_s of every daemon (default: the config's default, 10 s)",
    )
    args = parser.parse_args()
    classes = [c for c in args.classes.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="insider-bench-") as tmp:
        line = insider_figures(Path(tmp), classes, seconds=args.seconds, interval_s=args.interval)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
