"""The soak scenario (gossiplearn/testing/scenarios/soak.py, which benchmarks/soak_bench.py
runs): its figures on synthetic series, and one short run of 3 real peer daemons.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from gossiplearn.testing.scenarios import soak

MB = 1024 * 1024
WARMUP_S = 120.0
WINDOW_S = 60.0
DURATION_S = 600.0
SAMPLE_S = 5.0


def series(
    rss_mb: Any = lambda t: 400.0,
    fds: Any = lambda t: 17,
    tasks: Any = lambda t: 41,
    *,
    duration_s: float = DURATION_S,
    start_s: float = SAMPLE_S,
) -> list[Any]:
    """One peer's samples every SAMPLE_S seconds from ``start_s`` to ``duration_s``; each
    figure a function of t; one round completed every 2 s."""
    samples = []
    t = start_s
    while t <= duration_s:
        samples.append(
            soak.Sample(
                t=t,
                rss_bytes=int(rss_mb(t) * MB),
                open_fds=int(fds(t)),
                trio_tasks=int(tasks(t)),
                rounds_completed=int(t // 2),
                rounds_aborted=int(t // 100),
            )
        )
        t += SAMPLE_S
    return samples


def figures(peers: list[list[Any]], **kwargs: Any) -> dict[str, Any]:
    return dict(soak.growth_figures(peers, WARMUP_S, WINDOW_S, **kwargs))


def test_window_median_takes_the_window_only():
    samples = series(rss_mb=lambda t: t)
    # t = 120, 125, ..., 180 -> median 150.
    assert soak.window_median(samples, "rss_bytes", 120, 180) == 150 * MB
    assert soak.window_median(samples, "open_fds", 0, 1e9) == 17


def test_window_median_of_an_empty_window_says_which():
    with pytest.raises(soak.TooShortError, match=r"no open_fds sample in the window"):
        soak.window_median(series(), "open_fds", 700, 760)


def test_flat_series_grow_by_nothing_and_are_flat():
    report = figures([series() for _ in range(8)])
    assert report["rss_growth_max"] == 0.0
    assert report["fds_growth_max"] == 0 and report["tasks_growth_max"] == 0
    assert report["rss_slope_mb_per_h"] == 0.0
    assert report["rss_baseline_mb"] == report["rss_final_mb"] == 400.0
    assert report["rss_ok"] and report["fds_flat"] and report["tasks_flat"] and report["ok"]
    assert report["peers_measured"] == 8
    assert report["samples"] == 8 * len(series())
    # Each peer's last reading: 600 // 2 rounds, 600 // 100 aborted.
    assert report["rounds_completed_total"] == 8 * 300
    assert report["rounds_aborted_total"] == 8 * 6
    assert report["per_peer"]["rounds_completed_after_warmup"] == [300 - 60] * 8


def test_a_peer_leaking_memory_fails_the_rss_bound_and_is_the_one_reported():
    leak = lambda t: 400.0 * (1 + 0.2 * max(0.0, t - WARMUP_S) / (DURATION_S - WARMUP_S))  # noqa: E731
    peers = [series() for _ in range(3)] + [series(rss_mb=leak)]
    report = figures(peers)
    assert not report["rss_ok"] and not report["ok"]
    assert report["fds_flat"] and report["tasks_flat"]
    assert report["worst_peer"]["rss"] == 3
    # Medians of [120, 180] and [540, 600]: 150 s and 570 s into the linear leak.
    expected = (1 + 0.2 * 450 / 480) / (1 + 0.2 * 30 / 480) - 1
    assert report["rss_growth_max"] == pytest.approx(expected, abs=1e-3)
    assert report["rss_baseline_mb"] < report["rss_final_mb"]
    # 80 MB over 480 s is 600 MB/h.
    assert report["rss_slope_mb_per_h"] == pytest.approx(600, rel=1e-3)
    # Just under the bound passes; a lower bound makes the same series fail.
    small = [series(rss_mb=lambda t: 400.0 + 0.05 * 400 * (t > 300))]
    assert figures(small)["rss_ok"]
    assert not figures(small, bounds=soak.Bounds(max_rss_growth=0.04))["rss_ok"]


def test_a_file_descriptor_leak_is_detected():
    one_per_minute = lambda t: 17 + t // 60  # noqa: E731
    peers = [series(), series(fds=one_per_minute), series()]
    report = figures(peers)
    assert not report["fds_flat"] and not report["ok"]
    assert report["rss_ok"] and report["tasks_flat"]
    assert report["worst_peer"]["fds"] == 1
    # Medians at 150 s (19) and 570 s (26).
    assert report["fds_growth_max"] == 7
    assert (report["fds_baseline"], report["fds_final"]) == (19, 26)


def test_a_task_leak_is_detected_and_the_slack_is_honoured():
    report = figures([series(tasks=lambda t: 41 + t // 20)])
    assert not report["tasks_flat"] and report["tasks_growth_max"] == 21
    # A growth within the slack is flat; one past it is not.
    within = [series(tasks=lambda t: 41 + 5 * (t > 300))]
    assert figures(within)["tasks_flat"]
    beyond = [series(tasks=lambda t: 41 + 6 * (t > 300))]
    assert not figures(beyond)["tasks_flat"]
    assert figures(beyond, bounds=soak.Bounds(task_slack=6))["tasks_flat"]


def test_spikes_inside_the_windows_barely_move_the_medians():
    """Rounds in flight: a few samples of each window far above the resting values."""

    def spiky(base: float, spike: float) -> Any:
        # 4 of the 13 samples of each window (every 4th sample) spike.
        return lambda t: base + spike * (int(t / SAMPLE_S) % 4 == 0)

    peer = series(rss_mb=spiky(400, 200), fds=spiky(17, 30), tasks=spiky(41, 100))
    report = figures([peer])
    assert report["rss_growth_max"] == 0.0
    assert report["rss_baseline_mb"] == report["rss_final_mb"] == 400.0
    assert report["fds_growth_max"] == 0 and report["tasks_growth_max"] == 0
    assert report["ok"]
    # Spikes only in the final window (3 of 13 samples) do not fail a flat peer either.
    late = lambda base, spike: lambda t: base + spike * (t > 540 and int(t) % 20 == 0)  # noqa: E731
    peer = series(rss_mb=late(400, 400), fds=late(17, 50), tasks=late(41, 100))
    assert figures([peer])["ok"]


def test_a_run_without_post_warmup_samples_gives_a_clear_error():
    short = [series(duration_s=100.0) for _ in range(3)]
    with pytest.raises(soak.TooShortError, match=r"no sample after the warm-up of 120 s"):
        figures(short)
    with pytest.raises(soak.TooShortError, match=r"no sample at all"):
        figures([[], []])


def test_a_peer_that_died_before_the_warmup_is_left_out_and_fails_ok():
    peers = [series(), series(duration_s=60.0), series()]
    report = figures(peers)
    assert report["peers_measured"] == 2 and not report["ok"]
    assert report["rss_ok"] and report["fds_flat"] and report["tasks_flat"]
    assert report["per_peer"]["rss_growth"][1] is None


def test_configs_too_short_for_two_windows_are_refused():
    soak.SoakConfig(duration_s=45, warmup_s=15, sample_s=2, window_s=10).validate()
    for bad in (
        {"duration_s": 200, "warmup_s": 120, "window_s": 60},
        {"peers": 2},
        {"sample_s": 40, "window_s": 60},
    ):
        with pytest.raises(ValueError):
            soak.SoakConfig(**bad).validate()
    with pytest.raises(ValueError, match=r"must cover the warm-up and two windows"):
        soak.SoakConfig(duration_s=100).validate()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_three_real_peers_stay_flat_for_45_seconds(tmp_path):
    config = soak.SoakConfig(peers=3, duration_s=45, warmup_s=15, sample_s=2, window_s=10)
    report = soak.run_soak(config, tmp_path)
    assert report["crashes"] == 0, report["crash_details"]
    assert report["peers_measured"] == 3
    assert report["samples"] > 0
    assert all(n >= 1 for n in report["per_peer"]["rounds_completed"]), report["per_peer"]
    assert report["rounds_completed_total"] >= 3
    assert report["fds_flat"], report
    assert report["tasks_flat"], report
    # RSS is not bounded this early (warm-up effects), but it is measured.
    for key in ("rss_baseline_mb", "rss_final_mb"):
        assert isinstance(report[key], float) and math.isfinite(report[key]) and report[key] > 0
    assert (tmp_path / "soak_series.json").is_file()
    assert sorted(p.name for p in (tmp_path / "peers").iterdir()) == [f"peer-{i}" for i in range(3)]
