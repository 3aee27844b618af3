"""Fuzzing a live peer: an admitted peer sends malformed and mutated messages over real streams.

The scenario (gossiplearn/testing/scenarios/fuzz.py, whose docstring says what is sent and
checked): a real daemon, an admitted fuzzer sending ``--messages`` messages over libp2p in
three phases (round 94%, peers and status 3% each), every generator of protocol v3's messages,
and broken streams; then liveness, model and counter checks.

Prints one JSON line: messages, crashes (the victim's run task died or hung, a liveness
check failed, or a handler raised something other than a framing or stream error),
model_changes, rejected_by_reason, rejected_total, uncounted (refused messages missing from
/metrics: frames that reached the decoder but were not counted, plus broken streams unless
/metrics counts them), seconds, peak_rss_mb (the whole process: victim and fuzzer); then the
details: fuzz_seconds, messages_per_s, rss_growth_mb, sent_frames (per protocol and generator),
broken_streams (per protocol and kind), streams, send_errors, frames_reaching_decoder, counted,
uncounted_frames, handler_errors and handler_error_kinds, broken_streams_in_metrics,
metrics_match_rejected, victim_error, alive, model_changed, rounds_joined, stop_seconds,
victim_state_before / victim_state_after (yamux streams, those it left open, replay-guard
keys...). Exits 1 if crashes, model changes or uncounted > 0.

Usage: python benchmarks/fuzz_bench.py [--messages 100000] [--seed 0] [--batch 100]
       [--concurrency 4] [--dir DIR (default a temp dir)]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from gossiplearn.testing.scenarios.fuzz import run_fuzz


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=100, help="frames per round stream")
    parser.add_argument("--concurrency", type=int, default=4, help="streams in flight")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    # Only errors on stderr: a fuzzed host logs a warning for every stream it resets.
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.ERROR)
    logging.basicConfig(level=logging.ERROR, handlers=[stderr])
    with tempfile.TemporaryDirectory(prefix="fuzz-bench-") as temp:
        report = run_fuzz(
            args.dir or Path(temp),
            args.messages,
            seed=args.seed,
            batch=args.batch,
            concurrency=args.concurrency,
        )
    print(json.dumps(report.as_json()), flush=True)
    return 1 if report.crashes or report.model_changes or report.uncounted else 0


if __name__ == "__main__":
    sys.exit(main())
