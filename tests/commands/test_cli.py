"""The command line: init, allow, keys show, status on a daemon that is not running."""

import stat
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gossiplearn.cli import app
from gossiplearn.crypto.identity import Identity, load_key_file
from gossiplearn.peer.config import load_config, save_config

runner = CliRunner()
OTHER = Identity(b"\x07" * 32)
OTHER_ADDR = f"/ip4/127.0.0.1/tcp/4999/p2p/{OTHER.peer_id}"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_init_creates_a_private_identity_and_a_documented_config(tmp_path):
    peer = tmp_path / "org-a"
    result = invoke("init", peer, "--shard", "1/3", "--allow", OTHER_ADDR)
    assert result.exit_code == 0, result.output
    identity = load_key_file(peer / "identity.key")
    assert stat.S_IMODE((peer / "identity.key").stat().st_mode) == 0o600
    assert f"peer id:  {identity.peer_id}" in result.output
    config = load_config(peer)
    listen = config.peer.listen[0]
    assert not listen.endswith("/tcp/0")  # a real port, so the address can be shared now
    assert f"{listen}/p2p/{identity.peer_id}" in result.output
    assert config.peer.allow == [OTHER.peer_id] and config.peer.bootstrap == [OTHER_ADDR]
    assert config.data.options["shard"] == "1/3"
    assert config.status.port > 0


def test_init_refuses_to_overwrite_an_identity(tmp_path):
    peer = tmp_path / "org-a"
    assert invoke("init", peer).exit_code == 0
    first = load_key_file(peer / "identity.key")
    result = invoke("init", peer)
    assert result.exit_code == 1 and "refusing to overwrite" in result.output
    assert load_key_file(peer / "identity.key") == first


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("--shard=3/3", "--shard: shard '3/3': need 0 <= i < N"),
        ("--shard=x", "--shard: shard 'x' is not of the form 'i/N'"),
        ("--listen=/dns/example/tcp/1", "--listen must look like /ip4/127.0.0.1/tcp/PORT"),
    ],
)
def test_init_refuses_bad_options(tmp_path, bad, why):
    result = invoke("init", tmp_path / "p", bad)
    assert result.exit_code == 2
    assert why in result.output
    assert not (tmp_path / "p" / "identity.key").exists()


def test_allow_takes_peer_ids_and_multiaddrs(tmp_path):
    peer = tmp_path / "org-a"
    invoke("init", peer)
    third = Identity(b"\x08" * 32).peer_id
    result = invoke("allow", peer, OTHER_ADDR, third)
    assert result.exit_code == 0, result.output
    config = load_config(peer)
    assert config.peer.allow == [OTHER.peer_id, third]
    assert config.peer.bootstrap == [OTHER_ADDR]
    assert "nothing new" in invoke("allow", peer, third).output


def test_allow_refuses_garbage(tmp_path):
    peer = tmp_path / "org-a"
    invoke("init", peer)
    result = invoke("allow", peer, "not-a-peer")
    assert result.exit_code == 2
    assert "'not-a-peer' is neither a peer id" in result.output
    assert load_config(peer).peer.allow == []


def test_keys_show_prints_the_peer_id(tmp_path):
    peer = tmp_path / "org-a"
    invoke("init", peer)
    result = invoke("keys", "show", peer)
    peer_id = load_key_file(peer / "identity.key").peer_id
    assert result.output.splitlines()[0] == f"peer id:  {peer_id}"


def test_keys_show_prints_the_announced_address_or_the_relayed_one(tmp_path):
    peer = tmp_path / "org-a"
    invoke("init", peer, "--listen", "/ip4/0.0.0.0/tcp/4001")
    peer_id = load_key_file(peer / "identity.key").peer_id
    config = load_config(peer)
    config.peer.announce = ["/dns4/gossip.example.org/tcp/4001"]
    save_config(peer, config)
    lines = invoke("keys", "show", peer).output.splitlines()
    assert lines[1] == f"address:  /dns4/gossip.example.org/tcp/4001/p2p/{peer_id}"
    assert lines[2] == "listen:   /ip4/0.0.0.0/tcp/4001"
    config.peer.announce = []
    config.peer.allow = [OTHER.peer_id]
    config.peer.relays = [OTHER_ADDR]
    save_config(peer, config)
    lines = invoke("keys", "show", peer).output.splitlines()
    assert lines[1] == f"address:  {OTHER_ADDR}/p2p-circuit/p2p/{peer_id}  (through a relay)"


def test_status_of_a_daemon_that_is_not_running_exits_1_with_one_line(tmp_path):
    peer = tmp_path / "org-a"
    invoke("init", peer)
    result = subprocess.run(
        [sys.executable, "-m", "gossiplearn.cli", "status", str(peer)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "not running" in result.stderr


def test_status_help_does_not_import_libp2p_or_torch():
    code = (
        "import sys; from gossiplearn.cli import app; "
        "heavy = {'libp2p', 'torch'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
