"""Operator mistakes: each ends with its exit code and ONE line on stderr naming the cause and
the fix (no traceback); the details go to DIR/logs/peer.log.

Exit codes: 2 for an invalid configuration or argument, 1 when the environment refuses (a
directory or port in use, a key others can read, ...). Daemons run as real processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gossiplearn.crypto.identity import Identity, load_key_file
from gossiplearn.peer.config import load_config, save_config
from gossiplearn.peer.dirlock import LOCK_FILE, read_holder

pytestmark = pytest.mark.timeout(120)

CLI = [sys.executable, "-m", "gossiplearn.cli"]
STARTUP_S = 60.0


def cli(
    *args: object, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def exactly(result: subprocess.CompletedProcess[str], code: int, line: str) -> None:
    """The command exited with ``code`` and printed ``line`` alone on stderr."""
    assert (result.returncode, result.stderr) == (code, line + "\n"), result.stderr


def one_line(result: subprocess.CompletedProcess[str], code: int, *parts: str) -> str:
    """The command exited with ``code`` and printed exactly one line holding ``parts``."""
    lines = result.stderr.splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("gossiplearn: ")
    for part in parts:
        assert part in line, (part, line)
    assert "Traceback" not in result.stderr
    return line


def new_peer(tmp_path: Path, name: str = "org") -> Path:
    directory = tmp_path / name
    assert cli("init", directory).returncode == 0
    return directory


def edit(directory: Path, section: str, key: str, value: str) -> None:
    """Set ``[section] key = value`` (TOML text) in DIR/config.toml, as an operator would."""
    path = directory / "config.toml"
    lines = path.read_text().splitlines()
    start = lines.index(f"[{section}]")
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("["):
            break
        if lines[i].startswith(f"{key} = "):
            end = i + 1
            if lines[i].rstrip().endswith("["):  # a multi-line array
                while not lines[end - 1].startswith("]"):
                    end += 1
            lines[i:end] = [f"{key} = {value}"]
            path.write_text("\n".join(lines) + "\n")
            return
    raise AssertionError(f"no {key} in [{section}]")


def start(directory: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "run", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def status_json(directory: Path) -> dict | None:
    port = load_config(directory).status.port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
            return json.load(response)
    except OSError:
        return None


def wait_ready(directory: Path, process: subprocess.Popen[str]) -> dict:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        document = status_json(directory)
        if document is not None:
            return document
        time.sleep(0.3)
    raise AssertionError("the daemon did not start")


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    return process.returncode, stderr


@pytest.fixture
def running(tmp_path: Path):
    """A daemon running on a fresh directory; stopped (SIGTERM) afterwards."""
    directory = new_peer(tmp_path)
    process = start(directory)
    try:
        wait_ready(directory, process)
        yield directory, process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


# ---- the daemon ------------------------------------------------------------------------------


def test_a_second_daemon_on_the_same_directory_is_refused_and_the_first_stops_cleanly(running):
    directory, first = running
    assert read_holder(directory / LOCK_FILE) == first.pid
    second = cli("run", directory)
    one_line(
        second,
        1,
        f"{directory} is already used by a running gossiplearn daemon (pid {first.pid})",
        "stop it first, or give this peer its own directory",
    )
    code, stderr = stop(first)
    assert code == 0 and "Traceback" not in stderr


def test_a_listen_port_in_use_is_refused(tmp_path: Path):
    directory = new_peer(tmp_path)
    listen = load_config(directory).peer.listen[0]
    port = int(listen.rsplit("/", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = cli("run", directory)
    one_line(
        result,
        1,
        f"cannot listen on {listen}: port {port} is already in use",
        f"change peer.listen in {directory / 'config.toml'}",
    )
    assert "cannot listen" in (directory / "logs" / "peer.log").read_text()


def test_a_status_port_in_use_is_refused(tmp_path: Path):
    directory = new_peer(tmp_path)
    port = load_config(directory).status.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = cli("run", directory)
    one_line(
        result,
        1,
        f"cannot serve the status on 127.0.0.1:{port}",
        f"set status.port in {directory / 'config.toml'} to a free port",
    )


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        (
            "peer",
            "listen",
            '["/ip4/127.0.0.1/tcp/nope"]',
            "peer.listen: '/ip4/127.0.0.1/tcp/nope' is not a valid multiaddr",
        ),
        ("peer", "listen", '["/ip4/1.2.3/tcp/4001"]', "expected /ip4/127.0.0.1/tcp/PORT"),
        ("training", "lr", "-1", "training.lr must be > 0, got -1"),
        ("training", "batch_size", "0", "training.batch_size must be >= 1, got 0"),
        ("round", "frac_bits", "40", "round.frac_bits must be in 1..30, got 40"),
        (
            "logging",
            "level",
            '"verbose"',
            "logging.level must be debug, info, warning, error, got 'verbose'",
        ),
    ],
)
def test_an_invalid_config_value_names_the_file_and_the_key(
    tmp_path: Path, section: str, key: str, value: str, message: str
):
    directory = new_peer(tmp_path)
    edit(directory, section, key, value)
    line = one_line(cli("run", directory), 2, str(directory / "config.toml"), message)
    assert "max_abs_average" not in line  # frac_bits is explained in its own terms


def test_a_broken_model_factory_is_named_as_such(tmp_path: Path):
    directory = new_peer(tmp_path)
    edit(directory, "model", "factory", '"gossiplearn.peer.learning.architectures:no_such_model"')
    line = one_line(
        cli("run", directory),
        1,
        "model.factory 'gossiplearn.peer.learning.architectures:no_such_model'",
        "not found",
    )
    assert "data loader" not in line and "data.loader" not in line
    config = load_config(directory)
    config.model.factory = "gossiplearn.peer.learning.architectures:mlp"
    config.model.options = {"colour": "red"}
    save_config(directory, config)
    one_line(
        cli("run", directory),
        1,
        "model.factory 'gossiplearn.peer.learning.architectures:mlp' failed with model.options",
        "TypeError",
    )


def test_an_unwritable_checkpoint_directory_is_logged_counted_and_survived(tmp_path: Path):
    directory = new_peer(tmp_path)
    (directory / "checkpoints").write_text("not a directory\n")  # even root cannot write in it
    process = start(directory)
    try:
        wait_ready(directory, process)
    finally:
        code, stderr = stop(process)
    # It stopped cleanly (its stop checkpoint failed too), said so in one line, no traceback.
    assert code == 0, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "cannot write a checkpoint" in line]
    assert len(errors) == 1, stderr
    assert "make the directory writable" in errors[0]
    assert "cannot write a checkpoint" in (directory / "logs" / "peer.log").read_text()


def test_a_checkpoint_failure_shows_in_status(running):
    directory, process = running
    # The checkpoint directory vanishes under a running daemon and a file takes its place.
    checkpoints = directory / "checkpoints"
    if checkpoints.exists():
        for child in checkpoints.iterdir():
            child.unlink()
        checkpoints.rmdir()
    checkpoints.write_text("in the way\n")
    code, stderr = stop(process)  # the stop checkpoint fails: logged, counted, exit 0
    assert code == 0 and "Traceback" not in stderr
    assert stderr.count("cannot write a checkpoint") == 1


def test_libp2p_stray_lines_go_to_the_log_file_not_stderr(tmp_path: Path):
    directory = new_peer(tmp_path)
    nobody = Identity.generate().peer_id
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    config = load_config(directory)
    config.peer.allow = [nobody]
    config.peer.bootstrap = [f"/ip4/127.0.0.1/tcp/{closed}/p2p/{nobody}"]
    config.discovery.ping_interval_s = 0.5
    save_config(directory, config)
    process = start(directory)
    log_file = directory / "logs" / "peer.log"
    try:
        wait_ready(directory, process)
        deadline = time.monotonic() + 20
        while "Failed to open TCP stream" not in log_file.read_text():
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.3)
    finally:
        code, stderr = stop(process)
    assert code == 0
    assert "Failed to open TCP stream" not in stderr and "libp2p" not in stderr


def test_a_lone_daemon_says_why_nothing_happens(running):
    directory, _ = running
    deadline = time.monotonic() + 20
    while True:
        document = status_json(directory)
        if document and document["waiting"]:
            break
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert document["waiting"][0]["message"] == "0 live neighbours, need 2"
    text = cli("status", directory).stdout
    waiting = [line for line in text.splitlines() if line.startswith("waiting")]
    assert waiting and waiting[0].split(None, 1)[1].strip() == "0 live neighbours, need 2"
    assert "fresh model" in text and "training" in text  # resumed from, samples


def ignore_sigint() -> None:
    """As a POSIX shell starts a background job (`gossiplearn sim ... &` in a script or CI)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_sigint() -> None:
    """As a terminal's foreground job has it (whatever the suite itself was started with)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_to_sim_stops_every_peer(tmp_path: Path, sigint: str):
    """SIGTERM stops a simulation and all its daemons even where SIGINT is ignored (it used to
    be re-raised as SIGINT, and such a run went on to the end), exits 143, and removes the
    peers' directories, and --out which this run made."""
    out = tmp_path / "sim"
    sim = subprocess.Popen(
        [
            *CLI,
            "sim",
            "--peers",
            "3",
            "--rounds",
            "100000",
            "--mode",
            "process",
            "--no-baselines",
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ignore_sigint if sigint == "ignored" else default_sigint,
    )
    try:
        locks = [out / "peers" / f"peer-{i}" / LOCK_FILE for i in range(3)]
        deadline = time.monotonic() + STARTUP_S
        while not all(read_holder(lock) for lock in locks):  # every daemon runs
            assert sim.poll() is None and time.monotonic() < deadline, sim.stderr
            time.sleep(0.5)
        pids = [read_holder(lock) for lock in locks]
        sim.send_signal(signal.SIGTERM)
        _, stderr = sim.communicate(timeout=60)
    finally:
        if sim.poll() is None:
            sim.kill()
    assert (sim.returncode, stderr) == (
        143,
        "gossiplearn: interrupted by SIGTERM; every peer was stopped, no results written\n",
    )
    alive = []
    for pid in pids:
        assert pid is not None
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    assert alive == []
    assert not out.exists()  # OUT/peers is scratch; OUT was this run's and is empty


# ---- the other commands ----------------------------------------------------------------------


def test_init_onto_a_file_is_refused(tmp_path: Path):
    path = tmp_path / "org"
    path.write_text("something else\n")
    one_line(cli("init", path), 2, f"{path} exists and is not a directory", "give a new directory")
    assert path.read_text() == "something else\n"


def test_status_addr_with_a_readable_key_is_refused(tmp_path: Path):
    directory = new_peer(tmp_path)
    os.chmod(directory / "identity.key", 0o644)
    target = f"/ip4/127.0.0.1/tcp/4001/p2p/{Identity.generate().peer_id}"
    one_line(
        cli("status", "--addr", target, "--identity", directory),
        1,
        "--identity: permissions 0644",
        f"chmod 600 '{directory / 'identity.key'}'",
    )


def test_keys_show_prints_the_full_dialable_address(tmp_path: Path):
    directory = new_peer(tmp_path)
    result = cli("keys", "show", directory)
    peer_id = load_key_file(directory / "identity.key").peer_id
    listen = load_config(directory).peer.listen[0]
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"peer id:  {peer_id}",
        f"address:  {listen}/p2p/{peer_id}",
    ]


def test_allow_refuses_our_own_id(tmp_path: Path):
    directory = new_peer(tmp_path)
    own = load_key_file(directory / "identity.key").peer_id
    one_line(
        cli("allow", directory, own), 2, f"{own} is this peer's own id", "give the other peer's id"
    )
    assert load_config(directory).peer.allow == []


@pytest.mark.parametrize(
    ("port", "message"),
    [("99999", "integer not in range"), ("0", "has port 0, which cannot be dialed")],
)
def test_allow_refuses_invalid_ports(tmp_path: Path, port: str, message: str):
    directory = new_peer(tmp_path)
    address = f"/ip4/127.0.0.1/tcp/{port}/p2p/{Identity.generate().peer_id}"
    one_line(cli("allow", directory, address), 2, message)
    assert load_config(directory).peer.bootstrap == []


# ---- the cases, each with its exact line and exit code -------------------------------


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[str]:
    """``directory`` made unwritable for this test; yields the error a write gets there. As
    root, mode bits do not stop a write: the immutable attribute does, where the file
    system has it (else the test is skipped)."""
    os.chmod(directory, 0o555)
    immutable = False
    try:
        try:
            (directory / ".probe").touch()
        except OSError:
            pass
        else:
            (directory / ".probe").unlink()
            immutable = subprocess.run(["chattr", "+i", str(directory)]).returncode == 0
            if not immutable:
                pytest.skip("cannot make a directory unwritable here (root, no chattr +i)")
        try:
            (directory / ".probe").touch()
        except OSError as error:
            yield error.strerror
        else:
            pytest.skip("the directory stays writable")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        os.chmod(directory, 0o700)


def test_allow_on_a_directory_it_cannot_write(tmp_path: Path):
    directory = new_peer(tmp_path)
    other = Identity.generate().peer_id
    with unwritable(directory) as why:
        result = cli("allow", directory, other)
    exactly(
        result,
        1,
        f"gossiplearn: cannot write {directory / 'config.toml'} ({why}); make {directory} "
        "writable by this user (the config is replaced by a new file in it), then run this again",
    )
    assert load_config(directory).peer.allow == []


def test_commands_given_a_file_or_a_plain_directory_say_so(tmp_path: Path):
    directory = new_peer(tmp_path)
    config_file = directory / "config.toml"
    for command in ("run", "status", "evidence", "audit"):
        exactly(
            cli(command, config_file),
            2,
            f"gossiplearn: {config_file} is not a directory; give a peer directory (the one "
            "`gossiplearn init` made, holding config.toml and identity.key)",
        )
    plain = tmp_path / "plain"
    plain.mkdir()
    exactly(
        cli("keys", "show", plain),
        2,
        f"gossiplearn: {plain} is not a peer directory (no config.toml, no identity.key); "
        "create one with `gossiplearn init DIR`, or give the directory `init` made",
    )
    odd = new_peer(tmp_path, "odd")
    (odd / "config.toml").unlink()
    (odd / "config.toml").mkdir()  # unreadable as a file, even by root
    exactly(
        cli("allow", odd, Identity.generate().peer_id),
        2,
        f"gossiplearn: cannot read {odd / 'config.toml'} (Is a directory); give a peer "
        "directory whose config.toml this user can read",
    )
    exactly(
        cli("keys", "show", tmp_path / "nowhere"),
        2,
        f"gossiplearn: {tmp_path / 'nowhere'} does not exist; give a peer directory "
        "(`gossiplearn init DIR` makes one)",
    )


def test_a_deleted_identity_key_says_how_to_recover(tmp_path: Path):
    directory = new_peer(tmp_path)
    (directory / "identity.key").unlink()
    line = (
        f"gossiplearn: no identity key file at {directory / 'identity.key'}: restore it from a "
        "backup (the peer id others admit is derived from it), or start a new identity with "
        "`gossiplearn init NEW_DIR` and have the other peers admit its id"
    )
    exactly(cli("keys", "show", directory), 1, line)
    exactly(cli("run", directory), 1, line)


def test_status_addr_of_a_peer_that_does_not_admit_us(running, tmp_path: Path):
    directory, _ = running
    stranger = new_peer(tmp_path, "stranger")
    address = status_json(directory)["addrs"][0]  # type: ignore[index]
    us = load_key_file(stranger / "identity.key").peer_id
    exactly(
        cli("status", "--addr", address, "--identity", stranger),
        1,
        f"gossiplearn: {us} (--identity {stranger}) is not admitted by {address}; admit it "
        f"there with `gossiplearn allow THAT_PEER_DIR {us}` and restart that daemon",
    )


def test_status_addr_of_a_peer_that_does_not_answer(running, tmp_path: Path):
    directory, daemon = running
    asker = new_peer(tmp_path, "asker")
    address = status_json(directory)["addrs"][0]  # type: ignore[index]
    daemon.send_signal(signal.SIGSTOP)  # the port still accepts; nothing answers on it
    try:
        result = cli("status", "--addr", address, "--identity", asker)
    finally:
        daemon.send_signal(signal.SIGCONT)
    exactly(
        result,
        1,
        f"gossiplearn: cannot connect to {address} (no answer to the connection); check that "
        "the peer runs there, under that peer id",
    )


INTERRUPTED_IMPORT = """
import importlib.abc, os, runpy, signal, sys

# Ctrl-C as a terminal's foreground job gets it: a suite started in the background of a script
# (`make test &`) runs with SIGINT ignored, and its children inherit that.
signal.signal(signal.SIGINT, signal.default_int_handler)

class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "gossiplearn.commands.sim":  # Ctrl-C while the commands load
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
sys.argv = ["gossiplearn", "status", "--help"]
runpy.run_module("gossiplearn.cli", run_name="__main__")
"""


def test_ctrl_c_while_the_commands_load_exits_130_without_a_traceback():
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_IMPORT], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr, result.stdout) == (130, "", "")


@pytest.mark.parametrize(
    ("option", "value", "line"),
    [
        (
            "--partition",
            "foo:1",
            "gossiplearn: --partition 'foo:1' is not 'iid', 'dirichlet:ALPHA' with ALPHA > 0 or "
            "'shards:C' with C >= 1",
        ),
        (
            "--status-port",
            "70000",
            "gossiplearn: --status-port must be a TCP port (0..65535; 0: pick a free one), got "
            "70000",
        ),
        (
            "--trainer",
            "trainer",
            "gossiplearn: --trainer 'trainer' is not of the form 'package.module:function'",
        ),
    ],
)
def test_init_checks_every_option_before_writing(
    tmp_path: Path, option: str, value: str, line: str
):
    directory = tmp_path / "org"
    exactly(cli("init", directory, option, value, "--no-check"), 2, line)
    assert not directory.exists()


SIM = ("sim", "--peers", "3", "--rounds", "1", "--mode", "memory", "--no-baselines")


@pytest.mark.parametrize(
    ("option", "value", "line"),
    [
        (
            "--dataset",
            "nosuch",
            "gossiplearn: --dataset 'nosuch' is not a built-in dataset: choose digits, "
            "fashion-mnist or synthetic, or give your own with --data",
        ),
        (
            "--partition",
            "foo:1",
            "gossiplearn: --partition 'foo:1' is not 'iid', 'dirichlet:ALPHA' with ALPHA > 0 or "
            "'shards:C' with C >= 1",
        ),
        ("--lr", "-1", "gossiplearn: --lr must be > 0, got -1"),
        ("--mode", "cloud", "gossiplearn: --mode must be process, inproc or memory, got 'cloud'"),
        ("--hidden", "abc", "gossiplearn: --hidden takes layer sizes like 64,64, got 'abc'"),
        (
            "--peers",
            "abc",
            "gossiplearn: Invalid value for '--peers': Input should be a valid integer, unable "
            "to parse string as an integer; see `gossiplearn sim --help`",
        ),
    ],
)
def test_sim_refuses_a_bad_argument_before_drawing_or_writing_anything(
    tmp_path: Path, option: str, value: str, line: str
):
    out = tmp_path / "out"
    result = cli(*SIM, "--out", out, option, value)
    exactly(result, 2, line)
    assert result.stdout == ""  # no progress bar first
    assert not out.exists()


def test_a_failed_sim_leaves_no_empty_out(tmp_path: Path):
    (tmp_path / "broken_data.py").write_text(
        "def data(peer, peers):\n    raise RuntimeError('the data is not there')\n"
    )
    out = tmp_path / "out"
    result = cli(
        *SIM,
        "--data",
        "broken_data:data",
        "--out",
        out,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    exactly(
        result,
        1,
        "gossiplearn: --data 'broken_data:data' failed for peer 0 of 3: RuntimeError: the data "
        "is not there",
    )
    assert not out.exists()


def test_help_shows_names_not_types(tmp_path: Path):
    wide = {**os.environ, "COLUMNS": "200"}
    allow = cli("allow", "--help", env=wide).stdout
    assert "Usage: gossiplearn allow [OPTIONS] DIR PEER..." in allow
    sim = cli("sim", "--help", env=wide).stdout
    assert "pip install 'gossiplearn[dp]'" in sim  # rich once took [dp] for markup
    for text in (allow, sim, cli("init", "--help", env=wide).stdout):
        assert "<bool>" not in text and "<list[" not in text and "{" not in text, text


def test_status_watch_into_a_pipe_writes_each_refresh_and_stops_on_sigterm(running):
    """Into a pipe, each refresh arrives as it is made (it used to wait for the end, and a
    SIGTERM left nothing); SIGTERM ends the watch as Ctrl-C does, exit 0."""
    directory, _ = running
    peer_id = status_json(directory)["peer_id"]  # type: ignore[index]
    for options, wanted in ((["--json"], None), ([], ["peer", "id", peer_id])):
        watch = subprocess.Popen(
            [*CLI, "status", str(directory), "--watch", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert watch.stdout is not None
            line = watch.stdout.readline()  # the first refresh, while the watch goes on
            if wanted is None:
                assert json.loads(line)["peer_id"] == peer_id  # one document a line
            else:
                assert line.startswith("status at ")
                while line and line.split() != wanted:  # the table under it
                    line = watch.stdout.readline()
                assert line.split() == wanted
            watch.send_signal(signal.SIGTERM)
            watch.stdout.read()
            watch.wait(timeout=30)
            assert watch.stderr is not None
            stderr = watch.stderr.read()
        finally:
            if watch.poll() is None:
                watch.kill()
        assert (watch.returncode, stderr) == (0, "")


def test_evidence_clear_of_a_peer_without_a_proof(tmp_path: Path):
    directory = new_peer(tmp_path)
    nobody = Identity.generate().peer_id
    exactly(
        cli("evidence", directory, "--clear", nobody),
        2,
        f"gossiplearn: --clear {nobody}: no proof against this peer in "
        f"{directory / 'evidence'}, so nothing to clear; `gossiplearn evidence {directory}` "
        "lists the peers refused",
    )
