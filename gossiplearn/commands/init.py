"""``gossiplearn init DIR``: a new peer directory with an identity and a documented config."""

from __future__ import annotations

import os
import re
from pathlib import Path

import typer

from gossiplearn.commands.common import dialable, fail, parse_peer
from gossiplearn.crypto.identity import Identity, write_key_file
from gossiplearn.peer.config import (
    CONFIG_FILE,
    IDENTITY_FILE,
    DataSection,
    PeerConfig,
    save_config,
)
from gossiplearn.peer.net.ports import free_port
from gossiplearn.sim.specs import DATASET_NAMES, check_partition, one_of

_TCP_PORT = re.compile(r"^/ip4/(?P<ip>[0-9.]+)/tcp/(?P<port>\d+)$")


def _listen_address(listen: str) -> str:
    """The listen multiaddr with port 0 replaced by a free port, so it can be shared now."""
    from gossiplearn.peer.config import listen_address_problem

    match = _TCP_PORT.match(listen)
    problem = listen_address_problem(listen) if match else None
    if problem:
        fail(f"--listen: {problem}", 2)
    if not match:
        fail(f"--listen must look like /ip4/127.0.0.1/tcp/PORT, got {listen!r}", 2)
    if match["port"] != "0":
        return listen
    bind_ip = match["ip"] if match["ip"] != "0.0.0.0" else "127.0.0.1"
    return f"/ip4/{match['ip']}/tcp/{_free_port(bind_ip)}"


def _free_port(host: str = "127.0.0.1") -> int:
    """A port for the new peer; a bad GOSSIPLEARN_PORTS or a full range is one line."""
    try:
        return free_port(host)
    except (ValueError, OSError) as exc:
        fail(str(exc))


def init(
    directory: Path = typer.Argument(..., help="The peer directory to create.", metavar="DIR"),
    listen: str = typer.Option(
        "/ip4/127.0.0.1/tcp/0", help="Listen multiaddr (port 0: pick a free one)."
    ),
    bootstrap: list[str] = typer.Option(
        [], help="Multiaddr .../p2p/ID to dial at start (repeatable)."
    ),
    allow: list[str] = typer.Option(
        [], help="Peer id or .../p2p/ID multiaddr to admit (repeatable)."
    ),
    dataset: str = typer.Option("digits", help=f"Built-in dataset: {', '.join(DATASET_NAMES)}."),
    shard: str = typer.Option("0/1", help="This peer's shard I/N of the dataset's seeded split."),
    partition: str = typer.Option(
        "dirichlet:0.3",
        help='How the dataset is split: "dirichlet:ALPHA", "shards:C" or "iid" (synthetic: '
        '"synthetic:ALPHA,BETA").',
    ),
    model: str = typer.Option(
        "",
        help="Your model factory, module:function returning a torch module with backbone and "
        "head (model.factory; its keyword arguments go in model.options). Default: an MLP.",
    ),
    data: str = typer.Option(
        "",
        help="Your data loader, module:function returning (train, validation[, test]) "
        "(data.loader; its keyword arguments go in data.options). Default: --dataset.",
    ),
    model_option: list[str] = typer.Option(
        [], help="KEY=VALUE for model.options (repeatable; VALUE as in TOML, else a string)."
    ),
    data_option: list[str] = typer.Option(
        [], help="KEY=VALUE for data.options (repeatable; VALUE as in TOML, else a string)."
    ),
    trainer: str = typer.Option(
        "",
        help="Your trainer, module:Class (training.trainer). Default: the built-in one.",
    ),
    check: bool = typer.Option(
        True,
        help="With --model, --data or --trainer: build them and evaluate once, so a mistake "
        "shows now, as one line naming the key.",
    ),
    status_port: int = typer.Option(0, help="Status port on 127.0.0.1 (0: pick a free one)."),
    open_admission: bool = typer.Option(False, "--open", help="Admit any peer (demos only)."),
) -> None:
    """Create DIR with config.toml and identity.key (mode 0600); print the peer id and address."""
    if directory.exists() and not directory.is_dir():
        fail(f"{directory} exists and is not a directory; give a new directory for the peer", 2)
    key_path = directory / IDENTITY_FILE
    if key_path.exists():
        fail(f"{key_path} already exists; refusing to overwrite an identity")
    if (directory / CONFIG_FILE).exists():
        fail(f"{directory / CONFIG_FILE} already exists; refusing to overwrite it")
    # Every option is checked here, before anything is written: `run` must not be the first
    # to find a typo.
    if dataset not in DATASET_NAMES:
        fail(f"--dataset {dataset!r} is not a built-in dataset: choose {one_of(DATASET_NAMES)}", 2)
    from gossiplearn.peer.learning.data import spec_problem
    from gossiplearn.sim.datasets import DATASETS, DEFAULT_VALIDATION, parse_shard

    try:
        parse_shard(shard)
    except ValueError as exc:
        fail(f"--shard: {exc}", 2)
    try:
        check_partition(partition, dataset)
    except ValueError as exc:
        fail(f"--{exc}", 2)
    for flag, spec in (("--model", model), ("--data", data), ("--trainer", trainer)):
        problem = spec and spec_problem(spec, flag)
        if problem:
            fail(problem, 2)
    if not 0 <= status_port <= 65535:
        fail(
            f"--status-port must be a TCP port (0..65535; 0: pick a free one), got {status_port}", 2
        )
    allowed: list[str] = []
    boot: list[str] = []
    for text in allow:
        peer_id, address = parse_peer(text)
        allowed.append(peer_id)
        if address:
            boot.append(address)
    for address in bootstrap:
        peer_id, parsed = parse_peer(address)
        if parsed is None:
            fail(f"--bootstrap needs a full multiaddr ending in /p2p/ID, got {address!r}", 2)
        boot.append(address)

    config = PeerConfig()
    config.peer.listen = [_listen_address(listen)]
    config.peer.allow = list(dict.fromkeys(allowed))
    config.peer.bootstrap = list(dict.fromkeys(boot))
    config.peer.admission = "open" if open_admission else "allowlist"
    info = DATASETS[dataset]
    if data:
        config.data = DataSection(data, {})
    else:
        config.data = DataSection(
            info.loader,
            {"shard": shard, "partition": partition, "seed": 0, "validation": DEFAULT_VALIDATION},
        )
    if model:
        config.model.factory = model
        config.model.options = {}
    else:
        config.model.options = {
            "input_dim": info.input_dim,
            "hidden": [64, 64],
            "classes": info.classes,
        }
    config.model.options.update(parse_options("--model-option", model_option))
    config.data.options.update(parse_options("--data-option", data_option))
    config.training.trainer = trainer
    config.status.port = status_port or _free_port()
    try:
        config.validate()
    except ValueError as exc:
        fail(str(exc), 2)
    if check and (model or data or trainer):
        _check_learning(config)

    try:
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    except OSError as exc:
        fail(f"cannot create {directory} ({exc.strerror or exc}); give a directory you can write")
    identity = Identity.generate()
    write_key_file(key_path, identity)
    save_config(directory, config)
    typer.echo(f"peer id:  {identity.peer_id}")
    typer.echo(f"address:  {dialable(config.peer.listen[0], identity.peer_id)}")
    typer.echo(f"created:  {directory}/{CONFIG_FILE}, {directory}/{IDENTITY_FILE} (0600)")
    typer.echo(f"next:     gossiplearn allow {directory} <other peer>; gossiplearn run {directory}")


def parse_options(flag: str, pairs: list[str]) -> dict[str, object]:
    """KEY=VALUE pairs; VALUE read as a TOML value (10, 0.5, true, [64, 64], "x"), else kept
    as the string it is."""
    import tomllib

    options: dict[str, object] = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        if not separator or not key.strip().isidentifier():
            fail(f"{flag} takes KEY=VALUE with KEY a Python name, got {pair!r}", 2)
        try:
            options[key.strip()] = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            options[key.strip()] = text
    return options


def _check_learning(config: PeerConfig) -> None:
    """Build the model, data and trainer as `gossiplearn run` will, and evaluate once; a
    mistake is one line naming the config key (nothing is written then)."""
    from gossiplearn.peer.learning.builtin import load_learning
    from gossiplearn.peer.learning.data import DataLoaderError
    from gossiplearn.peer.learning.split_model import SplitModelError
    from gossiplearn.peer.learning.trainer import DeviceUnavailable

    try:
        model, data, _, first = load_learning(config)
    except (DataLoaderError, SplitModelError, DeviceUnavailable) as exc:
        fail(f"{exc} (nothing written; fix it, or pass --no-check)")
    figures = ", ".join(f"{k} {v:.3g}" for k, v in first.items() if k != "samples")
    typer.echo(
        f"checked:  backbone {model.backbone_size} values, "
        f"{len(data.train)} training samples; untrained: {figures}"
    )
