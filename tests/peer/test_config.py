"""The documented config file: rendered, parsed back, and refused clearly when wrong."""

import pytest

from gossiplearn.peer.config import (
    ConfigError,
    PeerConfig,
    load_config,
    parse_config,
    render_config,
    save_config,
)

PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


def test_rendered_template_parses_back_to_the_same_config(tmp_path):
    config = PeerConfig()
    config.peer.allow = ["12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"]
    config.data.options = {"shard": "1/3", "seed": 4, "partition": "iid"}
    save_config(tmp_path, config)
    assert load_config(tmp_path) == config


def test_every_key_is_documented():
    lines = render_config(PeerConfig()).splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#") and not lines[i - 1].startswith("#"):
            # Keys inside an options table follow their documented table header.
            assert any(lines[j].startswith("[") and ".options" in lines[j] for j in range(i))


@pytest.mark.parametrize(
    "text, message",
    [
        ("[peer]\nnope = 1\n", "unknown key"),
        ("[nope]\n", "unknown key"),
        ("[round]\ngroup_size = 2\n", "3..16"),
        ('[round]\ngroup_size = "4"\n', "must be int"),
        ("[round]\nmix = 0\n", "mix"),
        ('[peer]\nadmission = "maybe"\n', "admission"),
        ("[peer\n", "not valid TOML"),
        ("[discovery]\nmax_neighbours = true\n", "must be int"),
        ("[round]\nmax_abs_average = 0\n", "max_abs_average"),
        ("[round]\nmax_abs_average = 2048\n", "max_abs_average"),
        ("[round]\nfrac_bits = 26\n", "max_abs_average"),
        ('[round]\nmax_abs_average = "big"\n', "must be float"),
        ('[peer]\nannounce = ["/ip4/0.0.0.0/tcp/4001"]\n', "peer.announce: .*any-address"),
        ('[peer]\nannounce = ["/ip4/203.0.113.7/tcp/0"]\n', "peer.announce: .*port 0"),
        ('[peer]\nannounce = ["/ip4/203.0.113.7/udp/4001"]\n', "peer.announce: .*not a TCP"),
        (f'[peer]\nannounce = ["/ip4/203.0.113.7/tcp/4001/p2p/{PEER}"]\n', "no /p2p/ part"),
        ('[peer]\nrelays = ["/ip4/203.0.113.7/tcp/4001"]\n', "peer.relays: .*/p2p/PEER_ID"),
        (f'[peer]\nrelays = ["/ip4/203.0.113.7/tcp/4001/p2p/{PEER}"]\n', "not admitted.*allow"),
        ("[round]\nassumed_mbit = 0\n", "round.assumed_mbit must be > 0"),
        ("[training]\ncheckpoint_every = -1\n", "training.checkpoint_every must be >= 0"),
    ],
)
def test_bad_configs_are_refused_with_the_key_named(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


def test_ints_are_accepted_where_floats_are_expected():
    assert parse_config("[round]\ninterval_s = 3\n").round.interval_s == 3.0


def test_missing_config_says_how_to_create_one(tmp_path):
    with pytest.raises(ConfigError, match="gossiplearn init"):
        load_config(tmp_path)


def test_max_abs_average_is_documented_and_read_back():
    text = render_config(PeerConfig())
    assert "# Abort a round whose average" in text and "max_abs_average = 64.0\n" in text
    assert parse_config("[round]\nmax_abs_average = 100\n").round.max_abs_average == 100.0
    config = parse_config("[round]\nfrac_bits = 16\nmax_abs_average = 30000.0\n")
    assert config.round.max_abs_average == 30_000.0


def test_announced_addresses_dns_names_and_relays_are_read_back():
    text = (
        "[peer]\n"
        'announce = ["/ip4/203.0.113.7/tcp/4001", "/dns4/gossip.example.org/tcp/4001"]\n'
        f'allow = ["{PEER}"]\n'
        f'bootstrap = ["/dns4/org-b.example.org/tcp/4001/p2p/{PEER}"]\n'
        f'relays = ["/dns6/relay.example.org/tcp/4001/p2p/{PEER}"]\n'
        "relay_service = true\n"
    )
    peer = parse_config(text).peer
    assert peer.announce[1] == "/dns4/gossip.example.org/tcp/4001"
    assert peer.bootstrap == [f"/dns4/org-b.example.org/tcp/4001/p2p/{PEER}"]
    assert peer.relays == [f"/dns6/relay.example.org/tcp/4001/p2p/{PEER}"]
    assert peer.relay_service


def test_the_assumed_link_speed_sets_the_round_machines_first_throughput():
    """A slow link with a large model: the first deadline must allow for the link, or no round
    ever finishes (docs/internet.md, "Deadlines across a WAN")."""
    default = PeerConfig().round.to_round_config()
    slow = parse_config("[round]\nassumed_mbit = 10\nround_timeout_s = 300\n").round
    assert default.assumed_bytes_per_s == 10_000_000  # the round machine's own default
    assert slow.to_round_config().assumed_bytes_per_s == 1_250_000
