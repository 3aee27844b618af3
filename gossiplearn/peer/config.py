"""A peer's configuration: ``DIR/config.toml``, every key documented in the file itself.

The file is rendered from :class:`PeerConfig` by :func:`render_config`, so ``gossiplearn init``
and ``gossiplearn allow`` always write the same documented template; :func:`load_config`
reads it back with clear errors for unknown keys and wrong types.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gossiplearn.crypto.identity import IdentityError, public_key_from_peer_id
from gossiplearn.fileio import write_atomically
from gossiplearn.privacy.dp import privacy_problem
from gossiplearn.protocol.config import RoundConfig
from gossiplearn.protocol.messages import MAX_WEIGHT, RING_BITS

if TYPE_CHECKING:
    from gossiplearn.peer.learning.learner import AcceptanceConfig
    from gossiplearn.peer.learning.trainer import TrainConfig
    from gossiplearn.privacy.dp import PrivacyConfig

CONFIG_FILE = "config.toml"
IDENTITY_FILE = "identity.key"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
ADMISSION_MODES = ("allowlist", "open")
LOG_LEVELS = ("debug", "info", "warning", "error")
#: round.frac_bits: the wire format carries at most 30 (a 32-bit ring needs a sign bit and
#: at least one integer bit).
FRAC_BITS_RANGE = (1, 30)


class ConfigError(ValueError):
    """A config file that cannot be used; the message says which key and why."""


@dataclass
class PeerSection:
    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    admission: str = "allowlist"
    allow: list[str] = field(default_factory=list)
    bootstrap: list[str] = field(default_factory=list)
    failed_admissions_per_minute: int = 60
    bulk_port: int = 0
    announce: list[str] = field(default_factory=list)
    relays: list[str] = field(default_factory=list)
    relay_service: bool = False
    keep_freed_memory: bool = True


@dataclass
class DiscoverySection:
    peer_exchange: bool = True
    mdns: bool = False
    max_neighbours: int = 16
    ping_interval_s: float = 5.0
    neighbour_timeout_s: float = 20.0


@dataclass
class RoundSection:
    group_size: int = 4
    frac_bits: int = 20
    ring_bits: int = 32
    clip: float = 8.0
    max_weight: int = 1
    interval_s: float = 10.0
    invite_timeout_s: float = 2.0
    round_timeout_s: float = 60.0
    assumed_mbit: float = 80.0
    mix: float = 1.0
    max_abs_average: float = 64.0

    def to_round_config(self) -> RoundConfig:
        """The round machine's parameters from this section: the one place ``[round]`` keys
        become a :class:`RoundConfig`, for the daemon and for ``gossiplearn sim``'s memory mode
        (:func:`gossiplearn.sim.config.round_section`). ``group_size`` is
        ``RoundConfig.max_group_size`` (the same k), seconds become milliseconds; ``interval_s``
        and ``mix`` are the daemon's, not the round machine's."""
        return RoundConfig(
            max_group_size=self.group_size,
            frac_bits=self.frac_bits,
            ring_bits=self.ring_bits,
            clip=self.clip,
            max_weight=self.max_weight,
            invite_timeout_ms=int(self.invite_timeout_s * 1000),
            round_timeout_ms=int(self.round_timeout_s * 1000),
            assumed_bytes_per_s=max(1, int(self.assumed_mbit * 1e6 / 8)),
            max_abs_average=self.max_abs_average,
        )


@dataclass
class ModelSection:
    factory: str = "gossiplearn.peer.learning.architectures:mlp"
    head_prefixes: list[str] = field(default_factory=list)
    share_batchnorm_stats: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    loader: str = "gossiplearn.sim.datasets:digits"
    options: dict[str, Any] = field(default_factory=lambda: {"shard": "0/1"})


@dataclass
class TrainingSection:
    epochs: int = 1
    steps_per_round: int = 0
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    head_epochs: int = 1
    seed: int = 0
    threads: int = 1
    acceptance: bool = True
    acceptance_tolerance: float = 0.02
    acceptance_metric: str = "error"
    local_reference: bool = False
    overlap: bool = False
    device: str = "cpu"
    trainer: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 1

    def to_train_config(self, privacy: PrivacyConfig | None = None) -> TrainConfig:
        """The trainer's settings: every :class:`TrainConfig` field but ``privacy`` is the
        ``[training]`` key of the same name (one list of fields, TrainConfig's; a test checks
        that each is a key here with the same default), ``privacy`` the ``[privacy]`` section's
        (:meth:`PrivacySection.to_privacy_config`)."""
        from gossiplearn.peer.learning.trainer import TrainConfig  # torch: only where training runs

        shared = {f.name: getattr(self, f.name) for f in train_config_fields(TrainConfig)}
        return TrainConfig(**shared, privacy=privacy)

    def to_acceptance_config(self) -> AcceptanceConfig:
        from gossiplearn.peer.learning.learner import AcceptanceConfig

        return AcceptanceConfig(self.acceptance, self.acceptance_tolerance, self.acceptance_metric)


def train_config_fields(train_config: type) -> list[dataclasses.Field[Any]]:
    """The fields of ``TrainConfig`` (passed in: it lives with torch) that ``[training]`` holds
    under the same names: all but ``privacy``, which ``[privacy]`` holds."""
    return [f for f in dataclasses.fields(train_config) if f.name != "privacy"]


@dataclass
class PrivacySection:
    enabled: bool = False
    epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float = 0.0
    rounds: int = 100

    def to_privacy_config(self) -> PrivacyConfig | None:
        """The trainer's DP-SGD settings; None when privacy is off."""
        from gossiplearn.privacy.dp import PrivacyConfig

        if not self.enabled:
            return None
        return PrivacyConfig(
            self.epsilon, self.delta, self.max_grad_norm, self.noise_multiplier, self.rounds
        )


@dataclass
class StatusSection:
    port: int = 0


@dataclass
class LoggingSection:
    level: str = "info"
    file: str = "logs/peer.log"


@dataclass
class PeerConfig:
    peer: PeerSection = field(default_factory=PeerSection)
    discovery: DiscoverySection = field(default_factory=DiscoverySection)
    round: RoundSection = field(default_factory=RoundSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    status: StatusSection = field(default_factory=StatusSection)
    logging: LoggingSection = field(default_factory=LoggingSection)

    def train_config(self) -> TrainConfig:
        """``[training]`` and ``[privacy]`` as the trainer takes them."""
        return self.training.to_train_config(self.privacy.to_privacy_config())

    def validate(self) -> PeerConfig:
        """Check every value; a ConfigError names the key, what is wrong and what is allowed."""
        peer, discovery, rnd, training = self.peer, self.discovery, self.round, self.training
        if peer.admission not in ADMISSION_MODES:
            raise ConfigError(f"peer.admission must be one of {ADMISSION_MODES}")
        if not peer.listen:
            raise ConfigError("peer.listen needs at least one multiaddr")
        for address in peer.listen:
            problem = listen_address_problem(address)
            if problem:
                raise ConfigError(f"peer.listen: {problem}")
        for peer_id in peer.allow:
            problem = peer_id_problem(peer_id)
            if problem:
                raise ConfigError(f"peer.allow: {problem}")
        for address in peer.bootstrap:
            problem = dial_address_problem(address)
            if problem:
                raise ConfigError(f"peer.bootstrap: {problem}")
        if peer.failed_admissions_per_minute < 0:
            raise ConfigError("peer.failed_admissions_per_minute must be >= 0 (0: no limit)")
        for address in peer.announce:
            problem = announce_address_problem(address)
            if problem:
                raise ConfigError(f"peer.announce: {problem}")
        for address in peer.relays:
            problem = dial_address_problem(address)
            if problem:
                raise ConfigError(f"peer.relays: {problem}")
            relay = address.rpartition("/p2p/")[2]
            if peer.admission != "open" and relay not in peer.allow:
                raise ConfigError(
                    f"peer.relays: {relay} is not admitted; admit it with `gossiplearn allow "
                    f"DIR {address}` (a relay must be a peer of this network)"
                )
        if not -1 <= peer.bulk_port <= 65535:
            raise ConfigError(
                "peer.bulk_port must be a TCP port (0..65535; 0: any free port) or -1 (off)"
            )
        if not 3 <= rnd.group_size <= 16:
            raise ConfigError("round.group_size must be in 3..16 (groups of 2 would leak)")
        if not 1 <= rnd.max_weight <= MAX_WEIGHT:
            raise ConfigError(f"round.max_weight must be in [1, {MAX_WEIGHT}] (1: equal weights)")
        if rnd.ring_bits not in RING_BITS:
            raise ConfigError(
                f"round.ring_bits must be 32, 16 or 8, got {rnd.ring_bits} (every peer of a "
                "network must agree)"
            )
        exponent = math.log2(rnd.clip) if rnd.clip > 0 else math.nan
        if not (exponent.is_integer() and -16 <= exponent <= 16):
            raise ConfigError(
                f"round.clip must be a power of two in [2^-16, 2^16], got {rnd.clip} (e.g. 8.0)"
            )
        if not 0 < rnd.mix <= 1:
            raise ConfigError("round.mix must be in (0, 1]")
        if not rnd.interval_s > 0:
            raise ConfigError("round.interval_s must be > 0")
        if not rnd.assumed_mbit > 0:
            raise ConfigError(f"round.assumed_mbit must be > 0 (Mbit/s), got {rnd.assumed_mbit:g}")
        if not 0 < rnd.invite_timeout_s < rnd.round_timeout_s:
            raise ConfigError("need 0 < round.invite_timeout_s < round.round_timeout_s")
        low, high = FRAC_BITS_RANGE
        if not low <= rnd.frac_bits <= high:
            raise ConfigError(
                f"round.frac_bits must be in {low}..{high}, got {rnd.frac_bits} (fixed-point "
                "fractional bits; the default is 20, and every peer of a network must agree)"
            )
        ring_range = 2.0 ** (31 - rnd.frac_bits)
        if not 0 < rnd.max_abs_average < ring_range:
            raise ConfigError(
                f"round.max_abs_average must be in (0, {ring_range:g}) at round.frac_bits = "
                f"{rnd.frac_bits}, got {rnd.max_abs_average:g}: lower one of the two"
            )
        if not 0 <= self.status.port <= 65535:
            raise ConfigError("status.port must be a TCP port (0..65535; 0: any free port)")
        if discovery.max_neighbours < 2:
            raise ConfigError("discovery.max_neighbours must be >= 2 to form a group of 3")
        if not discovery.ping_interval_s > 0:
            raise ConfigError("discovery.ping_interval_s must be > 0")
        if not discovery.neighbour_timeout_s > 0:
            raise ConfigError("discovery.neighbour_timeout_s must be > 0")
        if training.epochs < 0:
            raise ConfigError(f"training.epochs must be >= 0, got {training.epochs}")
        if training.batch_size < 1:
            raise ConfigError(f"training.batch_size must be >= 1, got {training.batch_size}")
        if not training.lr > 0:
            raise ConfigError(f"training.lr must be > 0, got {training.lr:g}")
        if not 0 <= training.momentum < 1:
            raise ConfigError(f"training.momentum must be in [0, 1), got {training.momentum:g}")
        if training.steps_per_round < 0:
            raise ConfigError(
                f"training.steps_per_round must be >= 0 (0: whole epochs), got "
                f"{training.steps_per_round}"
            )
        if not training.acceptance_metric.isidentifier():
            raise ConfigError(
                "training.acceptance_metric must name a metric of the trainer's evaluate() "
                f'(the built-in one: "error", "loss"), got {training.acceptance_metric!r}'
            )
        if not training.acceptance_tolerance >= 0:
            raise ConfigError(
                f"training.acceptance_tolerance must be >= 0, got {training.acceptance_tolerance:g}"
            )
        if training.head_epochs < 0:
            raise ConfigError(f"training.head_epochs must be >= 0, got {training.head_epochs}")
        if training.threads < 1:
            raise ConfigError(f"training.threads must be >= 1, got {training.threads}")
        if training.checkpoint_every < 0:
            raise ConfigError(
                "training.checkpoint_every must be >= 0 (1: after every round; 0: only when the "
                f"peer stops), got {training.checkpoint_every}"
            )
        privacy = self.privacy
        problem = privacy_problem(
            privacy.epsilon,
            privacy.delta,
            privacy.max_grad_norm,
            privacy.noise_multiplier,
            privacy.rounds,
        )
        if problem:
            raise ConfigError(problem)
        if privacy.enabled and training.local_reference:
            raise ConfigError(
                "privacy.enabled with training.local_reference: the local reference trains a "
                "second model on the records outside the privacy accountant; set "
                "training.local_reference = false"
            )
        if self.logging.level.lower() not in LOG_LEVELS:
            raise ConfigError(
                f"logging.level must be {', '.join(LOG_LEVELS)}, got {self.logging.level!r}"
            )
        if not self.logging.file.strip():
            raise ConfigError("logging.file must name a file (relative to the peer directory)")
        return self


_LISTEN_FORM = "/ip4/127.0.0.1/tcp/PORT"
_DIAL_FORM = "/ip4/HOST/tcp/PORT/p2p/PEER_ID"


def _tcp_address_problem(address: str, form: str) -> tuple[str | None, list[str]]:
    """(a problem, or None; the multiaddr's parts) for an /ip4|ip6/ADDR/tcp/PORT prefix."""
    import multiaddr

    try:
        multiaddr.Multiaddr(address)
    except Exception as exc:
        detail = str(exc).split(" (string:")[0]
        return f"{address!r} is not a valid multiaddr ({detail}); expected {form}", []
    parts = address.split("/")
    if len(parts) < 5 or parts[0] or parts[1] not in ("ip4", "ip6", "dns", "dns4", "dns6"):
        return f"{address!r} is not of the form {form}", parts
    if parts[3] != "tcp":
        return f"{address!r} is not a TCP address; expected {form}", parts
    return None, parts


def listen_address_problem(address: str) -> str | None:
    """Why ``address`` cannot be listened on (``/ip4|ip6/ADDR/tcp/PORT``), or None."""
    problem, parts = _tcp_address_problem(address, _LISTEN_FORM)
    if problem:
        return problem
    if parts[1] not in ("ip4", "ip6") or len(parts) != 5:
        return f"{address!r} is not of the form {_LISTEN_FORM} (an IP address, no /p2p/ part)"
    return None


_ANNOUNCE_FORM = "/ip4/PUBLIC_IP/tcp/PORT or /dns4/NAME/tcp/PORT"


def announce_address_problem(address: str) -> str | None:
    """Why ``address`` cannot be announced (``/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT``), or
    None."""
    problem, parts = _tcp_address_problem(address, _ANNOUNCE_FORM)
    if problem:
        return problem
    if len(parts) != 5:
        return f"{address!r} is not of the form {_ANNOUNCE_FORM} (no /p2p/ part)"
    if parts[4] == "0" or parts[2] in ("0.0.0.0", "::"):
        return (
            f"{address!r} cannot be dialed (port 0 or the any-address); give the address and "
            f"port others reach this peer at: {_ANNOUNCE_FORM}"
        )
    return None


def peer_id_problem(peer_id: str) -> str | None:
    try:
        public_key_from_peer_id(peer_id)
    except IdentityError as exc:
        return f"{peer_id!r} is not a peer id (12D3KooW...): {exc}"
    return None


def dial_address_problem(address: str) -> str | None:
    """Why ``address`` cannot be dialed (``/ip4/HOST/tcp/PORT/p2p/PEER_ID``), or None."""
    problem, parts = _tcp_address_problem(address, _DIAL_FORM)
    if problem:
        return problem
    if len(parts) != 7 or parts[5] != "p2p":
        return f"{address!r} does not end in /p2p/PEER_ID; expected {_DIAL_FORM}"
    if parts[4] == "0":
        return f"{address!r} has port 0, which cannot be dialed; expected {_DIAL_FORM}"
    return peer_id_problem(parts[6])


# Each key's documentation, written above it in the rendered file.
_DOCS: dict[str, str] = {
    "peer": "This peer on the network.",
    "peer.listen": "Multiaddrs to listen on. 127.0.0.1 keeps the peer on this machine;\n"
    "use /ip4/0.0.0.0/tcp/PORT to accept peers from other machines.",
    "peer.admission": '"allowlist": only the peer ids in `allow` may connect (refused ones are\n'
    'counted). "open": anyone may (demos only; a warning is logged at start).',
    "peer.allow": "Peer ids (12D3KooW...) admitted. Add with `gossiplearn allow DIR PEER`.",
    "peer.bootstrap": "Full multiaddrs (.../p2p/PEER_ID) dialed at start to find the network\n"
    "(/ip4/, /ip6/, /dns4/ or /dns6/ hosts).",
    "peer.failed_admissions_per_minute": "Failed admissions (a failed handshake, or a peer not\n"
    "admitted) each remote IP may cause per minute, in bursts of as many: every connection\n"
    "takes one on arrival, given back once its peer is admitted; past that its connections\n"
    "are closed before the handshake. 0: no limit.",
    "peer.bulk_port": "TCP port of the bulk channel, on the first listen address's IP: a round's\n"
    "model parts travel there, sealed (AES-256-GCM) with keys from the round's own key\n"
    "agreement, much faster than over libp2p. Peers learn it over libp2p. 0: any free port;\n"
    "-1: off (everything over libp2p). A peer that cannot reach it falls back to libp2p.",
    "peer.announce": "The addresses others should dial, if not the listen addresses: a public\n"
    "IP or DNS name and the port forwarded to this peer, e.g. /ip4/203.0.113.7/tcp/4001 or\n"
    "/dns4/gossip.example.org/tcp/4001 (no /p2p/ part). Signed into this peer's address\n"
    "record and printed by `gossiplearn keys show`. Forward bulk_port too (set it to a fixed\n"
    "port), or the round's model parts go over libp2p.",
    "peer.relays": "Full multiaddrs (.../p2p/PEER_ID) of admitted peers that run a relay\n"
    "(relay_service): for a peer behind a firewall or NAT that only dials out. It holds a\n"
    "reservation on each, and others reach it through them when they have no connection to\n"
    "it; its listen addresses are then not announced (set announce if it can be dialed too).",
    "peer.relay_service": "Relay connections between admitted peers that cannot reach each\n"
    "other (circuit relay v2): only peers on the allowlist may reserve or be relayed. Costs\n"
    "this peer the bandwidth of every relayed round, twice.",
    "peer.keep_freed_memory": "Keep the memory a round frees for the next round instead of\n"
    "returning it to the operating system (glibc's malloc: no mmap'd chunks, up to 256 MiB\n"
    "kept free): a round's buffers are then not page-faulted in afresh each time (10M\n"
    "parameters: ~10% less round time). The resident memory stays near its peak between\n"
    "rounds. No effect without glibc, nor in the Python API (gossiplearn.Peer: call\n"
    "gossiplearn.peer.heap.keep_freed_memory() in your program for the same).",
    "discovery": "Finding and watching neighbours.",
    "discovery.peer_exchange": "Exchange signed address records of admitted peers with neighbours.",
    "discovery.mdns": "Announce on the local network with mDNS (off by default; binds every\n"
    "interface and probes an outside address, so enable it only where that is wanted).",
    "discovery.max_neighbours": "At most this many neighbours are tracked.",
    "discovery.ping_interval_s": "Seconds between liveness pings to each neighbour.",
    "discovery.neighbour_timeout_s": "A neighbour not heard from for this long is not live.",
    "round": "Secure averaging rounds.",
    "round.group_size": "k: invite up to k-1 live neighbours; groups are 3..k members.",
    "round.frac_bits": "Fixed-point fractional bits of the 32-bit ring (every peer of a network\n"
    "must agree).",
    "round.ring_bits": "The ring of the secure sum: 32 (4 bytes an element), or 16 or 8 (2 or 1:\n"
    "half or a quarter of a round's bytes; stochastic rounding at a scale that makes the\n"
    "group's sum impossible to wrap, values clipped to +-round.clip). Every peer of a network\n"
    "must agree.",
    "round.clip": "With a 16- or 8-bit ring: a power of two above the backbone's largest\n"
    "weights; values beyond +-clip are clipped (counted), and an average beyond 0.9 clip is\n"
    "taken for garbage. Every peer of a network must agree.",
    "round.max_weight": "Cap on a member's averaging weight (every peer of a network must agree).\n"
    "1: equal weights, each member counts the same. Above 1: each member weighs its training\n"
    "sample count, capped here, so no member outweighs the cap; the members of a group then\n"
    "see each other's weights (they are in the signed roster).",
    "round.interval_s": "Mean seconds between this peer's invitations (randomized +-50%).",
    "round.invite_timeout_s": "How long an initiator waits for answers to its INVITE.",
    "round.round_timeout_s": "The longest any round may take. Each round's own deadline is scaled\n"
    "to the backbone and the measured throughput (seconds for small models), within this.",
    "round.assumed_mbit": "The throughput (Mbit/s) a round's deadline allows for until this peer\n"
    "has finished rounds of its own (then: what it measured): invite_timeout_s + 3 s + 4 x 2 x\n"
    "the backbone's bytes at this rate, at most round_timeout_s. On slower links with large\n"
    "models, set it to the slowest access link among the peers (and round_timeout_s above a\n"
    "round's time): rounds that pass their deadline teach the estimate nothing\n"
    "(docs/internet.md).",
    "round.mix": "After a round, backbone <- (1 - mix) * backbone + mix * group average.",
    "round.max_abs_average": "Abort a round whose average has any value beyond +-this: a member\n"
    "sent garbage, which decodes to values up to 2^(31 - frac_bits) (2048 at 20). Keep it above\n"
    "any real backbone weight and below 2^(31 - frac_bits).",
    "model": "The model: a torch module with a shared backbone and a personal head.",
    "model.factory": '"module:function" returning the torch module.',
    "model.head_prefixes": "Parameter-name prefixes of the personal head. Empty: the module has\n"
    "`backbone` and `head` attributes.",
    "model.share_batchnorm_stats": "Average BatchNorm running statistics too (default: local).",
    "model.options": "Keyword arguments for the factory.",
    "data": "This organization's data. It never leaves the peer.",
    "data.loader": '"module:function" returning (train, validation) or (train, validation, test)\n'
    "datasets: it trains on train, decides on validation whether a group average helps, and\n"
    "reports its accuracy on test (on validation if there is no test set).",
    "data.options": 'Keyword arguments for the loader (built-in digits: shard = "I/N",\n'
    'partition = "dirichlet:0.3" or "iid", seed, holdout = the test fraction, validation = the\n'
    "fraction held out of training to decide whether an average helps).",
    "training": "Local training: one fixed budget before each round this peer takes part in.",
    "training.epochs": "Local epochs (all parameters) per round, when steps_per_round is 0.",
    "training.steps_per_round": "Mini-batches per round (0: whole epochs, see epochs). Batches run\n"
    "on through the shuffled epochs from one round to the next.",
    "training.batch_size": "Mini-batch size.",
    "training.lr": "SGD learning rate.",
    "training.momentum": "SGD momentum.",
    "training.head_epochs": "Epochs of head-only fine-tuning after each successful round.",
    "training.seed": "Seed for shuffling and initialization.",
    "training.threads": "torch CPU threads for this peer.",
    "training.acceptance": "Apply a round's average only if, after the head fine-tune, this peer's\n"
    "own validation loss is not worse than with its own backbone by more than\n"
    "acceptance_tolerance; otherwise keep its own model and count the refusal.",
    "training.acceptance_tolerance": "Relative: 0.02 accepts an average up to 2% worse (and\n"
    "anything within two standard errors: a small validation set cannot tell more).",
    "training.acceptance_metric": "The validation metric the acceptance compares, lower is better: a\n"
    'key of the trainer\'s evaluate(). Built-in trainer: "error" (the 0-1 loss) or "loss"\n'
    "(cross-entropy).",
    "training.local_reference": "Also train a local-only copy of the model (never averaged) and\n"
    "fall back to it whenever it does better on validation: the peer never keeps a model\n"
    "worse than training alone, even if averages poison it gradually (twice the training).",
    "training.device": '"cpu", "cuda", "cuda:N", "mps" or "auto" (CUDA when available).',
    "training.trainer": '"module:Class" of your own trainer (see TrainerProtocol: train_round,\n'
    'finetune_head, evaluate), built as Class(model, data, config, **options). "": the built-in\n'
    "one (SGD, cross-entropy, accuracy).",
    "training.options": "Keyword arguments for training.trainer.",
    "training.overlap": "Train the next budget while a round runs (the round's change is applied\n"
    "on top). Off: the peer waits for its round, as the simulation's memory mode does.",
    "training.checkpoint_every": "Write a checkpoint after every Nth round this peer completes (1:\n"
    "after each; 0: only when the peer stops). A restart resumes from the last one written, so\n"
    "the rounds since are lost; fewer writes (each fsynced) help when rounds take milliseconds.",
    "privacy": "Record-level differential privacy (DP-SGD through Opacus; pip install\n"
    "'gossiplearn[dp]'). On: every training step (the round's budget and the head fine-tune)\n"
    "clips each record's gradient and adds Gaussian noise, so all this peer shares is\n"
    "(epsilon, delta)-DP for its training records; validation and test data are not covered.\n"
    "When the next round would exceed epsilon, the peer stops training and contributing.",
    "privacy.enabled": "Train with differential privacy (off by default).",
    "privacy.epsilon": "The total privacy budget of this peer's training records, over its life\n"
    "(spent epsilon is kept in DIR/privacy.json across restarts).",
    "privacy.delta": "The delta of the guarantee; must be below 1/training samples.",
    "privacy.max_grad_norm": "Each record's gradient is clipped to this L2 norm per step.",
    "privacy.noise_multiplier": "Noise standard deviation / max_grad_norm. 0: derived from\n"
    "epsilon, delta and the plan (rounds x (one training budget + one head fine-tune) at this\n"
    "peer's sampling rate batch_size / training samples), so the budget lasts that long.",
    "privacy.rounds": "Rounds the budget is planned for when noise_multiplier is 0.",
    "status": "The local status endpoint: GET /status (JSON) and /metrics (Prometheus).",
    "status.port": "TCP port on 127.0.0.1.",
    "logging": "Logs: one line per round, plus warnings and errors.",
    "logging.level": "debug, info, warning or error.",
    "logging.file": "Log file, relative to the peer directory (libp2p's own logs go only here).",
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[\n" + "".join(f"    {_toml_value(v)},\n" for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} to TOML")


def _comment(text: str) -> str:
    return "".join(f"# {line}\n" for line in text.splitlines())


def render_config(config: PeerConfig) -> str:
    """The documented TOML text of ``config``."""
    out = [
        "# gossiplearn peer configuration. Every key is documented above it.\n",
        "# Restart the daemon (`gossiplearn run DIR`) after editing.\n",
    ]
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        out.append(f"\n{_comment(_DOCS[section.name])}[{section.name}]\n")
        tables = []
        for item in dataclasses.fields(values):
            value = getattr(values, item.name)
            key = f"{section.name}.{item.name}"
            if isinstance(value, dict):
                tables.append((key, value))
                continue
            out.append(f"{_comment(_DOCS[key])}{item.name} = {_toml_value(value)}\n")
        for key, table in tables:
            out.append(f"\n{_comment(_DOCS[key])}[{key}]\n")
            out.extend(f"{name} = {_toml_value(v)}\n" for name, v in table.items())
    return "".join(out)


def _build(cls: type, values: Any, where: str) -> Any:
    """``cls`` from a parsed TOML table, checking keys and types; ``where`` is its dotted path."""
    if not isinstance(values, dict):
        raise ConfigError(f"[{where}] must be a table")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        place = f"[{where}]" if where else "the top level"
        raise ConfigError(f"unknown key(s) in {place}: {', '.join(unknown)}")
    kwargs = {}
    defaults = cls()
    for name, value in values.items():
        default = getattr(defaults, name)
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, path)
            continue
        expected = type(default)
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ConfigError(f"{path} must be {expected.__name__}, got {type(value).__name__}")
        kwargs[name] = value
    return cls(**kwargs)


def parse_config(text: str, source: str = CONFIG_FILE) -> PeerConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        return _build(PeerConfig, raw, "").validate()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(directory: Path) -> PeerConfig:
    path = Path(directory) / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"no {CONFIG_FILE} in {directory}: create the peer with `gossiplearn init {directory}`"
        ) from None
    except OSError as exc:  # unreadable, or DIR is a file
        raise ConfigError(
            f"cannot read {path} ({exc.strerror or exc}); give a peer directory whose "
            "config.toml this user can read"
        ) from None
    return parse_config(text, str(path))


def save_config(directory: Path, config: PeerConfig) -> Path:
    """Write the documented config atomically (temp file, fsync, rename)."""
    config.validate()
    path = Path(directory) / CONFIG_FILE
    text = render_config(config)
    write_atomically(path, lambda temp: temp.write_text(text, encoding="utf-8"), 0o644)
    return path


# ---- the reference page (docs/config.md), from the same dataclasses and _DOCS ---------------

REFERENCE_COMMAND = "python -m gossiplearn.peer.config --reference > docs/config.md"

_REFERENCE_INTRO = """\
`gossiplearn init DIR` writes `DIR/config.toml` with every key below, each documented above it
in the file itself (the same text as here); `gossiplearn run DIR` and `gossiplearn.Peer(DIR)`
read it at start (restart after editing). A key the schema does not know, a value of the wrong
type or out of range stops the start with one line naming the file and the key (exit code 2).
Keys left out take the defaults below. `gossiplearn allow DIR PEER` rewrites the file with the
peer added to `peer.allow` (and its address to `peer.bootstrap`).

Every peer of a network must agree on `round.frac_bits`, `round.ring_bits`, `round.clip` and
`round.max_weight`, and run the
same backbone (`model.*`: neighbours with another backbone schema are not invited); every other
key is each peer's own choice.
"""

_REFERENCE_MAPPING = """\
## Where the keys go

Each section becomes the settings object of the code that uses it, in one place each:

| section | becomes | by |
|---|---|---|
| `[round]` | `gossiplearn.protocol.config.RoundConfig`, the round machine's parameters | `RoundSection.to_round_config()`: `group_size` is `RoundConfig.max_group_size` (the same k: the largest group this peer forms or joins), `*_s` keys become `*_ms` fields; `interval_s` and `mix` stay with the daemon. `gossiplearn sim`'s memory mode builds its `RoundConfig` through the same function (`gossiplearn.sim.config.round_section`) |
| `[training]` | `gossiplearn.TrainConfig`, what a trainer is built with ({train_fields}), and the personal acceptance settings (`acceptance`, `acceptance_tolerance`, `acceptance_metric`) | `TrainingSection.to_train_config()`: each `TrainConfig` field is the key of the same name (tests/peer/test_config_reference.py checks that every field has its key, with the same default); `gossiplearn sim` builds its trainers' settings through it too (`gossiplearn.sim.config.training_section`) |
| `[privacy]` | `gossiplearn.PrivacyConfig` (`TrainConfig.privacy`; `None` when `enabled` is false) | `PrivacySection.to_privacy_config()` |
"""


def _markdown_cell(text: str) -> str:
    """One line of ``_DOCS`` text as a table cell: joined lines, Markdown's specials escaped."""
    return " ".join(text.split()).replace("|", "\\|").replace("*", "\\*")


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list of strings"
    return "table"


def _inline_value(value: Any) -> str:
    """A default as TOML on one line (tables inline)."""
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {_inline_value(v)}" for k, v in value.items()) + " }"
    return _toml_value(value)


def config_reference() -> str:
    """docs/config.md: every key of ``config.toml`` with its type, default and documentation,
    rendered from :class:`PeerConfig` and the same per-key text :func:`render_config` writes
    into the file (``_DOCS``). Regenerate with :data:`REFERENCE_COMMAND`."""
    from gossiplearn.peer.learning.trainer import TrainConfig  # the field list of [training]

    defaults = PeerConfig()
    out = [
        "# Configuration reference (`DIR/config.toml`)\n\n",
        f"<!-- Generated from gossiplearn/peer/config.py by `{REFERENCE_COMMAND}`;\n"
        "     tests/peer/test_config_reference.py checks it is current. Do not edit by hand. -->\n\n",
        _REFERENCE_INTRO,
        "\nSections: "
        + ", ".join(f"[`[{s.name}]`](#{s.name})" for s in dataclasses.fields(defaults))
        + ".\n",
    ]
    for section in dataclasses.fields(defaults):
        values = getattr(defaults, section.name)
        out.append(f"\n## [{section.name}]\n\n{' '.join(_DOCS[section.name].split())}\n\n")
        out.append("| key | type | default | meaning |\n|---|---|---|---|\n")
        for item in dataclasses.fields(values):
            value = getattr(values, item.name)
            key = f"{section.name}.{item.name}"
            out.append(
                f"| `{key}` | {_type_name(value)} | `{_inline_value(value)}` "
                f"| {_markdown_cell(_DOCS[key])} |\n"
            )
    fields = ", ".join(f"`{f.name}`" for f in train_config_fields(TrainConfig))
    out.append("\n" + _REFERENCE_MAPPING.format(train_fields=fields))
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m gossiplearn.peer.config --reference``: print docs/config.md."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m gossiplearn.peer.config", description="The config file's reference."
    )
    parser.add_argument(
        "--reference", action="store_true", help="print docs/config.md (Markdown) to stdout"
    )
    parser.add_argument(
        "--template", action="store_true", help="print the documented config.toml of the defaults"
    )
    args = parser.parse_args(argv)
    if not (args.reference or args.template):
        parser.error("give --reference or --template")
    sys.stdout.write(config_reference() if args.reference else render_config(PeerConfig()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
