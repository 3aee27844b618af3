"""The README's "Across the internet" example configures as written: three organizations made
with `gossiplearn init`, with the identities whose peer ids the example shows, take the example's
`[peer]` settings and run its commands verbatim (bash, the virtual environment's `bin` on
PATH); every config then loads, `keys show` prints the announced address, the peer behind the
firewall reserves on the relay it admits and is admitted by peer id only. Running such peers
across a WAN, the firewall and the relay included, is tests/peer/test_wan.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from gossiplearn.crypto.identity import Identity, write_key_file
from gossiplearn.peer.config import IDENTITY_FILE, load_config, save_config

ROOT = Path(__file__).resolve().parents[2]
HEADING = "## Across the internet"
BIN = Path(sys.executable).parent
#: The example's three organizations: their identities' seeds give the peer ids it shows.
ORGS = {"org-a": b"a" * 32, "org-b": b"b" * 32, "org-c": b"c" * 32}


def section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n{HEADING}")
    return text[start : text.find("\n## ", start + 1)]


def blocks() -> list[tuple[str, str]]:
    """The section's ``toml`` and ``sh`` blocks, (language, text), in the order they come."""
    found = re.findall(r"^```(toml|sh)\n(.*?)^```$", section(), flags=re.MULTILINE | re.DOTALL)
    return [(language, text) for language, text in found]


def test_the_internet_example_configures_as_written(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    ids = {}
    for org, seed in ORGS.items():
        subprocess.run(
            ["gossiplearn", "init", org, "--listen", "/ip4/0.0.0.0/tcp/4001"],
            cwd=tmp_path,
            env=env,
            check=True,
            capture_output=True,
        )
        identity = Identity(seed)
        (tmp_path / org / IDENTITY_FILE).unlink()
        write_key_file(tmp_path / org / IDENTITY_FILE, identity)
        ids[org] = identity.peer_id
    shown = ""
    for language, block in blocks():  # as a reader would: each in turn
        if language == "toml":
            org = re.search(r"^# (org-\w)", block, flags=re.MULTILINE).group(1)  # type: ignore[union-attr]
            config = load_config(tmp_path / org)
            for key, value in tomllib.loads(block)["peer"].items():
                setattr(config.peer, key, value)
            save_config(tmp_path / org, config)
            load_config(tmp_path / org)  # the config as it now stands is valid
            continue
        done = subprocess.run(
            ["bash", "-c", "set -e\n" + block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        shown += done.stdout
    a_address = f"/ip4/198.51.100.10/tcp/4001/p2p/{ids['org-a']}"
    assert f"address:  {a_address}" in shown  # keys show: the announced address
    a, c = load_config(tmp_path / "org-a"), load_config(tmp_path / "org-c")
    assert a.peer.relay_service and a.peer.bulk_port == 4002
    assert ids["org-c"] in a.peer.allow  # by peer id: it cannot be dialed
    assert not any(ids["org-c"] in address for address in a.peer.bootstrap)
    assert c.peer.relays == [a_address]
    assert set(c.peer.allow) == {ids["org-a"], ids["org-b"]}
    assert f"/dns4/gossip.org-b.example/tcp/4001/p2p/{ids['org-b']}" in c.peer.bootstrap
    c_shown = subprocess.run(
        ["gossiplearn", "keys", "show", "org-c"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert f"{a_address}/p2p-circuit/p2p/{ids['org-c']}" in c_shown.stdout
