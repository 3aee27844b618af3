"""Soak: N real peer daemons run for a long while; memory, file descriptors and trio tasks
must not creep up.

The peers are made by ``prepare_peers`` (digits, Dirichlet(0.3), seed 0, a round invitation
every ~1 s per peer, groups of up to 4) and run as real subprocesses, ``python -m
gossiplearn.cli run DIR``, exactly as ``gossiplearn sim --mode process`` starts them, each
writing DIR/stdout.log. Every ``sample_s`` seconds :func:`run_soak` reads every peer's
``GET /status`` and records, per peer, a time series of ``process.rss_bytes``,
``process.open_fds``, ``process.trio_tasks`` (measured inside the daemon) and
``rounds.completed`` / ``rounds.aborted``. A process that exits before the run stops it is a
crash: counted, reported, and the others carry on. After ``duration_s`` seconds (counted from
the peers' start, start-up included) every peer is stopped (SIGTERM, then kill).

Figures (:func:`growth_figures`, pure functions of the series), per peer, then the worst peer
for each: a round in flight briefly adds tasks (stream handlers, senders), file descriptors
(yamux streams ride on existing connections, but a redial opens a socket) and memory (shards,
masks), so single samples are noisy. Each figure compares the MEDIAN over the baseline window,
the first ``window_s`` seconds after the warm-up (``[warmup_s, warmup_s + window_s]``), with
the MEDIAN over the final window, the last ``window_s`` seconds of that peer's samples; at the
default 5 s sampling each median is over ~12 samples, so a round caught in a few of them does
not move it.

- ``rss_growth`` = (final - baseline) / baseline; ``rss_ok``: below ``max_rss_growth`` (0.10)
  for every peer. ``rss_slope_mb_per_h``: least-squares slope of RSS over all the post-warm-up
  samples of the peer with the largest growth (a leak shows as a steady slope even when the
  final median is within bounds).
- ``fds_growth``, ``tasks_growth``: final median - baseline median (absolute counts). "Flat"
  means ``final <= baseline + slack`` for every peer, slack ``fd_slack`` (2) file descriptors
  and ``task_slack`` (5) trio tasks. Why these: a peer holds one socket per libp2p connection
  (up to 7 with 8 peers), its listeners, the status endpoint's listener and the soak's own
  request (present in every sample, so it cancels out); the only legitimate difference between
  two windows is a connection being redialed while the old one lingers, so 2 allows one such
  transient in the median, while a leak of one fd per round (hundreds over a soak) or even
  one every few minutes exceeds it. Trio tasks: a round runs a handful of tasks per member
  (stream handler, sender, engine wake-ups) and discovery pings every neighbour each second,
  so the count at a random instant varies by a few tasks with the round/ping duty cycle; a
  median over a window can shift by up to about one round's worth (~4 tasks) if the duty
  cycle differs between windows, hence 5; a task leak (one per round, per ping or per
  request) grows by hundreds.
- ``ok`` = rss_ok and fds_flat and tasks_flat and crashes == 0 and every peer measured.

benchmarks/soak_bench.py prints :func:`run_soak`'s report; tests/sim/test_soak.py checks the
figures on synthetic series and runs 3 real peers for 45 s.
"""

from __future__ import annotations

import contextlib
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gossiplearn.peer.config import load_config
from gossiplearn.sim.config import SimConfig
from gossiplearn.sim.daemons import _fetch_status, _stop_all, prepare_peers, start_peer

MB = 1024 * 1024
PROGRESS_EVERY_S = 30.0
#: No peer answering /status within this long (torch import and data loading take ~5-15 s
#: on a loaded 2-core machine) means the soak cannot run.
STARTUP_TIMEOUT_S = 180.0
#: Lines of a crashed peer's stdout.log shown on stderr.
CRASH_LOG_LINES = 20


class TooShortError(ValueError):
    """Not enough samples for a figure: the run ended (or a peer died) before a window."""


@dataclass(frozen=True)
class Sample:
    """One /status reading of one peer; ``t`` in seconds since the peers were started."""

    t: float
    rss_bytes: int
    open_fds: int
    trio_tasks: int
    rounds_completed: int
    rounds_aborted: int = 0


@dataclass(frozen=True)
class Bounds:
    max_rss_growth: float = 0.10
    fd_slack: float = 2.0
    task_slack: float = 5.0


# ---- figures: pure functions of the sampled series ------------------------------------


def window_median(samples: Sequence[Sample], metric: str, start: float, end: float) -> float:
    """Median of ``metric`` over the samples with ``start <= t <= end``.

    Raises :class:`TooShortError` when the window holds no sample."""
    values = [float(getattr(s, metric)) for s in samples if start <= s.t <= end]
    if not values:
        raise TooShortError(f"no {metric} sample in the window [{start:.1f}, {end:.1f}] s")
    return float(statistics.median(values))


def slope_per_hour(samples: Sequence[Sample], metric: str, scale: float = 1.0) -> float:
    """Least-squares slope of ``metric / scale`` against time, per hour (0.0 if fewer than
    two distinct sample times)."""
    ts = [s.t for s in samples]
    if len(set(ts)) < 2:
        return 0.0
    ys = [float(getattr(s, metric)) / scale for s in samples]
    mean_t, mean_y = statistics.fmean(ts), statistics.fmean(ys)
    covariance = sum((t - mean_t) * (y - mean_y) for t, y in zip(ts, ys, strict=True))
    variance = sum((t - mean_t) ** 2 for t in ts)
    return covariance / variance * 3600.0


@dataclass(frozen=True)
class PeerGrowth:
    """One peer's baseline and final window medians (see the module docstring)."""

    rss_baseline: float
    rss_final: float
    fds_baseline: float
    fds_final: float
    tasks_baseline: float
    tasks_final: float
    rss_slope_mb_per_h: float

    @property
    def rss_growth(self) -> float:
        return (self.rss_final - self.rss_baseline) / self.rss_baseline

    @property
    def fds_growth(self) -> float:
        return self.fds_final - self.fds_baseline

    @property
    def tasks_growth(self) -> float:
        return self.tasks_final - self.tasks_baseline


def peer_growth(samples: Sequence[Sample], warmup_s: float, window_s: float) -> PeerGrowth:
    """Baseline window ``[warmup_s, warmup_s + window_s]`` against the final window, the last
    ``window_s`` seconds of the peer's samples. Raises :class:`TooShortError` if the peer has
    no sample after the warm-up."""
    post = sorted((s for s in samples if s.t >= warmup_s), key=lambda s: s.t)
    if not post:
        last = max((s.t for s in samples), default=None)
        seen = "no sample at all" if last is None else f"the last sample at {last:.1f} s"
        raise TooShortError(
            f"no sample after the warm-up of {warmup_s:g} s ({seen}): "
            f"the run must last longer than warm-up + window ({warmup_s + window_s:g} s)"
        )
    base = (warmup_s, warmup_s + window_s)
    final = (post[-1].t - window_s, post[-1].t)
    rss_baseline = window_median(post, "rss_bytes", *base)
    if rss_baseline <= 0:
        raise ValueError("rss_bytes must be positive")
    return PeerGrowth(
        rss_baseline=rss_baseline,
        rss_final=window_median(post, "rss_bytes", *final),
        fds_baseline=window_median(post, "open_fds", *base),
        fds_final=window_median(post, "open_fds", *final),
        tasks_baseline=window_median(post, "trio_tasks", *base),
        tasks_final=window_median(post, "trio_tasks", *final),
        rss_slope_mb_per_h=slope_per_hour(post, "rss_bytes", MB),
    )


def _worst(values: Sequence[float | None]) -> int:
    """Index of the largest value (None: not measured, never the worst)."""
    measured = [(v, i) for i, v in enumerate(values) if v is not None]
    return max(measured, key=lambda vi: (vi[0], -vi[1]))[1]


def growth_figures(
    series: Sequence[Sequence[Sample]],
    warmup_s: float,
    window_s: float = 60.0,
    bounds: Bounds = Bounds(),  # noqa: B008 - frozen, so a shared default is safe
) -> dict[str, Any]:
    """The soak figures of ``series`` (one list of samples per peer).

    A peer with no sample after the warm-up (it crashed, or never answered) is left out of
    the growth figures and makes ``peers_measured`` < ``peers``; if no peer has one, raises
    :class:`TooShortError`."""
    growths: list[PeerGrowth | None] = []
    errors: list[str] = []
    for samples in series:
        try:
            growths.append(peer_growth(samples, warmup_s, window_s))
        except TooShortError as exc:
            growths.append(None)
            errors.append(str(exc))
    measured = [g for g in growths if g is not None]
    if not measured:
        raise TooShortError(errors[0] if errors else "no peer to measure")

    def per_peer(figure: Callable[[PeerGrowth], float]) -> list[float | None]:
        return [None if g is None else figure(g) for g in growths]

    rss = per_peer(lambda g: g.rss_growth)
    fds = per_peer(lambda g: g.fds_growth)
    tasks = per_peer(lambda g: g.tasks_growth)
    worst_rss, worst_fds, worst_tasks = _worst(rss), _worst(fds), _worst(tasks)
    g_rss, g_fds, g_tasks = growths[worst_rss], growths[worst_fds], growths[worst_tasks]
    assert g_rss is not None and g_fds is not None and g_tasks is not None
    last = [max(s, key=lambda x: x.t) if s else None for s in series]
    completed = [0 if s is None else s.rounds_completed for s in last]
    aborted = [0 if s is None else s.rounds_aborted for s in last]
    at_warmup = [max((x.rounds_completed for x in s if x.t <= warmup_s), default=0) for s in series]
    rss_ok = all(v < bounds.max_rss_growth for v in rss if v is not None)
    fds_flat = all(v <= bounds.fd_slack for v in fds if v is not None)
    tasks_flat = all(v <= bounds.task_slack for v in tasks if v is not None)
    return {
        "samples": sum(len(s) for s in series),
        "peers_measured": len(measured),
        "rounds_completed_total": sum(completed),
        "rounds_aborted_total": sum(aborted),
        # Absolute resident memory: the largest peer's, at the start of its post-warm-up
        # samples (just started: trained, not yet in a round) and over its final window.
        "rss_first_mb_max": round(
            max(min(s, key=lambda x: x.t).rss_bytes for s in series if s) / MB, 2
        ),
        "rss_final_mb_max": round(max(g.rss_final for g in measured) / MB, 2),
        "rss_growth_max": round(g_rss.rss_growth, 4),
        "rss_baseline_mb": round(g_rss.rss_baseline / MB, 2),
        "rss_final_mb": round(g_rss.rss_final / MB, 2),
        "rss_slope_mb_per_h": round(g_rss.rss_slope_mb_per_h, 2),
        "fds_growth_max": g_fds.fds_growth,
        "tasks_growth_max": g_tasks.tasks_growth,
        "rss_ok": rss_ok,
        "fds_flat": fds_flat,
        "tasks_flat": tasks_flat,
        "ok": rss_ok and fds_flat and tasks_flat and len(measured) == len(series),
        "worst_peer": {"rss": worst_rss, "fds": worst_fds, "tasks": worst_tasks},
        "fds_baseline": g_fds.fds_baseline,
        "fds_final": g_fds.fds_final,
        "tasks_baseline": g_tasks.tasks_baseline,
        "tasks_final": g_tasks.tasks_final,
        "per_peer": {
            "rss_growth": [None if v is None else round(v, 4) for v in rss],
            "rss_baseline_mb": per_peer(lambda g: round(g.rss_baseline / MB, 2)),
            "rss_slope_mb_per_h": per_peer(lambda g: round(g.rss_slope_mb_per_h, 2)),
            "fds_growth": fds,
            "fds_baseline": per_peer(lambda g: g.fds_baseline),
            "tasks_growth": tasks,
            "tasks_baseline": per_peer(lambda g: g.tasks_baseline),
            "rounds_completed": completed,
            "rounds_completed_after_warmup": [
                c - w for c, w in zip(completed, at_warmup, strict=True)
            ],
            "rounds_aborted": aborted,
        },
    }


# ---- the run: real daemons ---------------------------------------------------------------


@dataclass
class SoakConfig:
    peers: int = 8
    duration_s: float = 600.0
    warmup_s: float = 120.0
    sample_s: float = 5.0
    window_s: float = 60.0
    seed: int = 0
    bounds: Bounds = field(default_factory=Bounds)

    def validate(self) -> SoakConfig:
        if self.peers < 3:
            raise ValueError("a soak needs at least 3 peers (a group has 3 or more)")
        if min(self.sample_s, self.window_s) <= 0 or self.warmup_s < 0:
            raise ValueError("sample and window lengths must be positive, warm-up >= 0")
        if self.duration_s < self.warmup_s + 2 * self.window_s:
            raise ValueError(
                f"duration ({self.duration_s:g} s) must cover the warm-up and two windows "
                f"({self.warmup_s:g} + 2 x {self.window_s:g} s)"
            )
        if self.window_s < 2 * self.sample_s:
            raise ValueError("a window must hold at least two samples (window >= 2 x sample)")
        return self


@dataclass
class Crash:
    peer: int
    t: float
    returncode: int | None


def sample_of(document: dict[str, Any], t: float) -> Sample:
    """The figures of one /status document (KeyError/TypeError if the daemon lacks them)."""
    process, rounds = document["process"], document["rounds"]
    return Sample(
        t=round(t, 3),
        rss_bytes=int(process["rss_bytes"]),
        open_fds=int(process["open_fds"]),
        trio_tasks=int(process["trio_tasks"]),
        rounds_completed=int(rounds["completed"]),
        rounds_aborted=int(rounds["aborted"]),
    )


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _log_tail(path: Path, lines: int = CRASH_LOG_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _progress(elapsed: float, series: Sequence[Sequence[Sample]], crashes: int) -> None:
    latest = [s[-1] for s in series if s]
    if not latest:
        _say(f"[soak] {elapsed:6.0f} s: waiting for the peers to answer /status")
        return
    _say(
        f"[soak] {elapsed:6.0f} s: rounds {sum(s.rounds_completed for s in latest)}"
        f" (aborted {sum(s.rounds_aborted for s in latest)}),"
        f" mean RSS {statistics.fmean(s.rss_bytes for s in latest) / MB:.1f} MB,"
        f" fds {statistics.fmean(s.open_fds for s in latest):.1f},"
        f" tasks {statistics.fmean(s.trio_tasks for s in latest):.1f},"
        f" answering {len(latest)}/{len(series)}, crashes {crashes}"
    )


def run_soak(config: SoakConfig, out_dir: Path) -> dict[str, Any]:
    """Run the soak with the peer directories in ``out_dir``; the report (see the module
    docstring). Raises RuntimeError if no peer ever answered /status, TooShortError if no
    peer has a post-warm-up sample and none crashed."""
    config.validate()
    started = time.monotonic()
    sim = SimConfig(
        peers=config.peers,
        dataset="digits",
        partition="dirichlet:0.3",
        seed=config.seed,
        interval_s=1.0,
        mode="process",
    ).validate()
    dirs = prepare_peers(out_dir, sim)
    ports = [load_config(d).status.port for d in dirs]
    processes: list[subprocess.Popen[bytes]] = []
    series: list[list[Sample]] = [[] for _ in dirs]
    missed = [0] * len(dirs)
    crashes: dict[int, Crash] = {}
    try:
        for directory in dirs:
            processes.append(start_peer(directory))
        t0 = time.monotonic()
        _say(f"[soak] {config.peers} peers started in {out_dir}; {config.duration_s:g} s")
        next_progress = PROGRESS_EVERY_S
        tick = 0
        while True:
            elapsed = time.monotonic() - t0
            if elapsed >= config.duration_s:
                break
            for i, (process, port) in enumerate(zip(processes, ports, strict=True)):
                if i in crashes:
                    continue
                if process.poll() is not None:
                    crashes[i] = Crash(i, round(time.monotonic() - t0, 1), process.returncode)
                    _say(
                        f"[soak] CRASH: peer {i} exited with code {process.returncode} at "
                        f"{crashes[i].t} s; the last lines of {dirs[i] / 'stdout.log'}:\n"
                        + _log_tail(dirs[i] / "stdout.log")
                    )
                    continue
                document = _fetch_status(port)
                t = time.monotonic() - t0
                if document is None:
                    missed[i] += 1
                    continue
                try:
                    series[i].append(sample_of(document, t))
                except (KeyError, TypeError, ValueError) as exc:
                    raise RuntimeError(
                        f"peer {i}'s /status lacks the soak figures ({exc!r}): "
                        "is this daemon older than the `process` key?"
                    ) from exc
            if elapsed > STARTUP_TIMEOUT_S and not any(series):
                raise RuntimeError(
                    f"no peer answered /status within {STARTUP_TIMEOUT_S:g} s; "
                    f"see the stdout.log files under {out_dir / 'peers'}"
                )
            if len(crashes) == len(processes):
                _say("[soak] every peer has crashed: stopping early")
                break
            if elapsed >= next_progress:
                _progress(elapsed, series, len(crashes))
                next_progress += PROGRESS_EVERY_S
            tick += 1
            time.sleep(max(0.0, t0 + tick * config.sample_s - time.monotonic()))
    finally:
        _stop_all(processes)
    run_s = time.monotonic() - t0 if processes else 0.0
    unclean_stops = [
        i
        for i, p in enumerate(processes)
        if i not in crashes and p.returncode not in (0, -signal.SIGTERM)
    ]
    with contextlib.suppress(OSError):
        (out_dir / "soak_series.json").write_text(
            json.dumps(
                {"config": asdict(config), "series": [[asdict(s) for s in x] for x in series]}
            )
        )
    head: dict[str, Any] = {
        "peers": config.peers,
        "duration_s": config.duration_s,
        "warmup_s": config.warmup_s,
        "window_s": config.window_s,
        "sample_s": config.sample_s,
        "crashes": len(crashes),
    }
    try:
        figures = growth_figures(series, config.warmup_s, config.window_s, config.bounds)
    except TooShortError as exc:
        if not crashes:
            raise
        # The peers crashed before the first window: the run happened, the figures are moot.
        figures = {"samples": sum(len(s) for s in series), "ok": False, "error": str(exc)}
    figures["ok"] = bool(figures["ok"]) and not crashes
    tail = {
        "crash_details": [asdict(c) for c in crashes.values()],
        "unclean_stops": unclean_stops,
        "missed_readings": missed,
        "run_s": round(run_s, 1),
        "wall_s": round(time.monotonic() - started, 1),
    }
    # Headline figures first, in the order the issue lists them; details after.
    order = [
        "samples",
        "rounds_completed_total",
        "rounds_aborted_total",
        "rss_growth_max",
        "rss_baseline_mb",
        "rss_final_mb",
        "rss_slope_mb_per_h",
        "fds_growth_max",
        "tasks_growth_max",
        "rss_ok",
        "fds_flat",
        "tasks_flat",
        "ok",
    ]
    report = head | {k: figures.pop(k) for k in order if k in figures}
    return report | figures | tail
