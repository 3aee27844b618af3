"""The CPU hogs benchmarks run beside both systems with --load N."""

import pytest

from gossiplearn.testing.load import cpu_hogs


def test_hogs_spin_during_the_block_and_are_killed_after_it() -> None:
    with cpu_hogs(2) as hogs:
        assert len(hogs) == 2
        assert [hog.poll() for hog in hogs] == [None, None]
    assert [hog.returncode for hog in hogs] == [-9, -9]


def test_hogs_are_killed_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError, match="benchmark failed"), cpu_hogs(1) as hogs:
        raise RuntimeError("benchmark failed")
    assert hogs[0].returncode == -9


def test_no_hogs_for_zero_and_a_negative_count_is_refused() -> None:
    with cpu_hogs(0) as hogs:
        assert hogs == []
    with pytest.raises(ValueError, match="count must be >= 0, not -1"), cpu_hogs(-1):
        pass
