"""The README's quick start works as written: its shell blocks, run verbatim with bash in an
empty directory (the virtual environment's ``bin`` on ``PATH``, as the README says), make three
organizations that admit each other, run their daemons until a round completes, show the
status and stop the daemons, which all exit 0."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICK_START = "## Quick start"
BIN = Path(sys.executable).parent  # the venv that runs the tests: gossiplearn is installed there


def section(text: str, heading: str) -> str:
    """The Markdown section that starts with ``heading``, up to the next level-2 heading."""
    start = text.index(f"\n{heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def shell_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)


def quick_start() -> str:
    blocks = shell_blocks(section(README.read_text(encoding="utf-8"), QUICK_START))
    assert blocks, f"README.md has no ```sh block under {QUICK_START!r}"
    return "\n".join(blocks)


def test_the_quick_start_has_three_organizations_and_stays_short() -> None:
    script = quick_start()
    assert len(re.findall(r"^gossiplearn init ", script, flags=re.MULTILINE)) == 3
    assert len(re.findall(r"gossiplearn run ", script)) == 3
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_quick_start_runs_as_written_until_a_round_completes(tmp_path: Path) -> None:
    from gossiplearn.peer.learning.checkpoint import read_checkpoint_meta

    assert (BIN / "gossiplearn").exists(), f"no gossiplearn in {BIN}"
    script = tmp_path / "quick-start.sh"
    script.write_text(quick_start(), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    # Its own session, so that a hang can be stopped with every daemon the script started.
    process = subprocess.Popen(
        ["bash", "-e", str(script)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the quick start did not finish within 240 s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]
    # The block's last line: every daemon exited 0 after SIGTERM.
    assert "all three stopped cleanly" in output, output[-4000:]
    # The status it printed shows a completed round ...
    completed = re.findall(r"^rounds\s+(\d+) completed", output, flags=re.MULTILINE)
    assert completed and int(completed[-1]) >= 1, output[-4000:]
    # ... and every organization checkpointed after its rounds.
    for org in ("org-a", "org-b", "org-c"):
        meta = read_checkpoint_meta(work / org / "checkpoints")
        assert meta is not None and meta.rounds_completed >= 1, (org, meta)
