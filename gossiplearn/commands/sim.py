"""``gossiplearn sim``: a local multi-peer network on a non-IID split of a real dataset (or your
model, data and trainer: ``--model``, ``--data``, ``--trainer``), gossiplearn against
local-only, FedAvg and FedPer on the same split and budget, with a progress bar, a results
table, ``DIR/results.json`` and PNG plots."""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import typer

from gossiplearn.commands.common import fail
from gossiplearn.sim.stopping import GRACE_S

#: What a previous run leaves in --out (removed only with --overwrite).
_RUN_OUTPUTS = ("peers", "results.json", "accuracy_per_round.png", "per_peer_accuracy.png")


def _parse_hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        fail(f"--hidden takes layer sizes like 64,64, got {text!r}", 2)
    if not sizes or min(sizes) < 1:
        fail(f"--hidden needs at least one size, each >= 1, got {text!r}", 2)
    return sizes


def _parse_methods(text: str, baselines: bool) -> tuple[str, ...] | None:
    """--methods as a tuple (None: not given, the default set); with --no-baselines, only
    gossiplearn."""
    if not text:
        return None if baselines else ("gossiplearn",)
    if not baselines:
        fail("--no-baselines and --methods both choose the methods; give only --methods", 2)
    return tuple(part.strip() for part in text.split(",") if part.strip())


def sim(
    peers: int = typer.Option(4, help="Number of peers."),
    rounds: int = typer.Option(5, help="Rounds every peer completes (and baseline rounds)."),
    dataset: str = typer.Option("digits", help="digits, fashion-mnist or synthetic."),
    partition: str = typer.Option(
        "dirichlet:0.3", help='"dirichlet:ALPHA", "shards:C" or "iid" (synthetic: "synthetic:A,B").'
    ),
    group_size: int = typer.Option(4, help="k: groups of 3..k peers average together."),
    mode: str = typer.Option("process", help="process (real daemons), inproc or memory."),
    seed: int = typer.Option(0, help="Seed of the split, the models and the schedule."),
    out: Path = typer.Option(Path("sim-out"), help="Directory for results.json, plots, peers."),
    epochs: int = typer.Option(1, help="Local epochs per round (when --steps-per-round is 0)."),
    steps_per_round: int = typer.Option(
        0, help="Local mini-batches per round, for every method (0: whole --epochs)."
    ),
    max_weight: int = typer.Option(
        1,
        help="Weight cap: 1, equal weights (gossiplearn's default); above, each peer weighs "
        "its samples up to it. The baselines weigh peers the same way.",
    ),
    weight: str = typer.Option(
        "equal",
        help="equal (or samples capped at --max-weight), or samples: every method weighs each "
        "peer by its training samples, the cap set to the largest shard.",
    ),
    acceptance: bool = typer.Option(
        True, help="gossiplearn peers refuse an average that hurts their validation loss."
    ),
    ring: int = typer.Option(
        32,
        help="Ring of the secure sum: 32, or 16 or 8 bits (half or a quarter of the bytes; "
        "values clipped to +-clip).",
    ),
    clip: float = typer.Option(8.0, help="With --ring 16 or 8: a power of two above the weights."),
    hidden: str = typer.Option("64,64", help="Hidden layer sizes of the MLP backbone."),
    lr: float = typer.Option(0.05, help="SGD learning rate (training.lr)."),
    momentum: float = typer.Option(
        0.9, help="SGD momentum of the built-in trainer, in [0, 1) (training.momentum)."
    ),
    batch_size: int = typer.Option(32, help="Mini-batch size (training.batch_size)."),
    head_epochs: int = typer.Option(
        1,
        help="Head fine-tune budget after each average, in epochs (training.head_epochs; "
        "0: none). gossiplearn, fedper and the -ft baselines spend it.",
    ),
    validation: float = typer.Option(
        0.1,
        help="Share of each peer's training data held out for personal acceptance (a --data "
        "function that returns its own validation set keeps it).",
    ),
    model: str = typer.Option(
        "",
        help="Your model, module:function (no arguments -> a torch module with backbone and "
        "head). Default: an MLP of --hidden.",
    ),
    data: str = typer.Option(
        "",
        help="Your data, module:function called as function(peer, peers) -> (train, test) or "
        "(train, validation, test). Default: --dataset split by --partition.",
    ),
    trainer: str = typer.Option(
        "",
        help="Your trainer, module:Class (gossiplearn.TrainerProtocol); evaluate() must "
        "return accuracy. Default: the built-in one (SGD, cross-entropy).",
    ),
    model_option: list[str] = typer.Option(
        [], help="KEY=VALUE for --model's keyword arguments (repeatable; VALUE as in TOML)."
    ),
    data_option: list[str] = typer.Option(
        [],
        help="KEY=VALUE for --data: called as function(peer, peers, KEY=VALUE, ...) "
        "(repeatable; VALUE as in TOML, else a string).",
    ),
    trainer_option: list[str] = typer.Option(
        [],
        help="KEY=VALUE for --trainer: built as Class(model, data, config, KEY=VALUE, ...), "
        "plus peer= and peers= if it takes them (repeatable; VALUE as in TOML).",
    ),
    dp_epsilon: float = typer.Option(
        0.0,
        help="Differential privacy: every method trains with DP-SGD within this epsilon per "
        "peer over --rounds (0: off). Needs pip install 'gossiplearn\\[dp]'.",
    ),
    dp_delta: float = typer.Option(1e-5, help="The delta of --dp-epsilon."),
    dp_max_grad_norm: float = typer.Option(
        1.0, help="Per-record gradient clipping norm under --dp-epsilon."
    ),
    audit: bool = typer.Option(
        False,
        help="After each method, audit every peer's final model for membership inference "
        "on its own data (memory mode only; see gossiplearn audit).",
    ),
    audit_references: int = typer.Option(
        2, help="Reference models per peer for --audit's LiRA (0: the loss attack only)."
    ),
    ray: str = typer.Option(
        "",
        "--ray",
        metavar="ADDRESS",
        help="On a Ray cluster: process mode puts each daemon on a node with room, memory "
        "mode splits the peers over one actor per CPU. ADDRESS: auto (the cluster `ray "
        "start` set up here), local (a new one) or HOST:PORT. Needs pip install "
        "'gossiplearn[ray]'.",
    ),
    peer_cpus: float = typer.Option(1.0, help="With --ray: CPUs each daemon holds (fractions ok)."),
    peer_gpus: float = typer.Option(0.0, help="With --ray: GPUs each daemon holds (fractions ok)."),
    baselines: bool = typer.Option(True, help="Also run local-only, FedAvg and FedPer."),
    methods: str = typer.Option(
        "",
        help="Comma-separated methods to run, in order: gossiplearn, local, local-ft, fedavg, "
        "fedavg-ft, fedper, fedper-plain. Default: gossiplearn,local,fedavg,fedper.",
    ),
    eval_every: int = typer.Option(
        1,
        help="Evaluate every peer's test set every N rounds, and after the last (memory mode "
        "and the baselines; daemons evaluate after each of their rounds).",
    ),
    overwrite: bool = typer.Option(False, help="Replace the results of an earlier run in --out."),
) -> None:
    """Run a local multi-peer simulation and compare gossiplearn with the baselines.

    OUT/results.json is written after every round of every method. Ctrl-C stops every peer
    and exits with code 130, SIGTERM with 143; an interrupted run removes the peers'
    directories (OUT/peers) and keeps results.json, marked incomplete, with the rounds done."""
    from gossiplearn.commands.init import parse_options
    from gossiplearn.sim.config import DEFAULT_METHODS, SimConfig

    chosen = _parse_methods(methods, baselines) or DEFAULT_METHODS
    if mode == "process" and not ray:
        from gossiplearn.sim.daemons import start_fork_server

        start_fork_server()  # the daemons' imports, beside this command's own
    try:
        config = SimConfig(
            peers=peers,
            rounds=rounds,
            dataset=dataset,
            partition=partition,
            group_size=group_size,
            mode=mode,
            seed=seed,
            epochs=epochs,
            steps_per_round=steps_per_round,
            hidden=_parse_hidden(hidden),
            lr=lr,
            momentum=momentum,
            batch_size=batch_size,
            head_epochs=head_epochs,
            validation=validation,
            weight=weight,
            methods=chosen,
            eval_every=eval_every,
            model_options=parse_options("--model-option", model_option),
            data_options=parse_options("--data-option", data_option),
            trainer_options=parse_options("--trainer-option", trainer_option),
            max_weight=max_weight,
            ring_bits=ring,
            clip=clip,
            acceptance=acceptance,
            model=model,
            data=data,
            trainer=trainer,
            dp_epsilon=dp_epsilon,
            dp_delta=dp_delta,
            dp_max_grad_norm=dp_max_grad_norm,
            audit=audit,
            audit_references=audit_references,
            ray=ray,
            peer_cpus=peer_cpus,
            peer_gpus=peer_gpus,
        ).validate()
    except ValueError as exc:
        fail(str(exc), 2)
    if ray:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            fail("--ray needs Ray: pip install 'gossiplearn[ray]'", 2)
    from gossiplearn.sim.stopping import SIGINT_EXIT, SIGTERM_EXIT, Terminated, sigterm_raises

    created = not out.exists()
    try:
        # SIGTERM (a service manager, `kill`, a CI timeout) stops the peers as Ctrl-C does,
        # with a handler of its own: a job started in the background of a script runs with
        # SIGINT ignored, so re-raising it as SIGINT did nothing there.
        with sigterm_raises():
            _prepare_out(out, overwrite)
            from gossiplearn.peer.learning.lean import avoid_dynamo_import
            from gossiplearn.sim.experiment import run_experiment

            avoid_dynamo_import()  # memory mode and the baselines train here: no torch._dynamo
            run_experiment(
                config, out, on_stuck=lambda name: _tidy(out, created, _SAID[name], late=True)
            )
    except KeyboardInterrupt:
        _interrupted(out, created, "Ctrl-C", SIGINT_EXIT)
    except Terminated:
        _interrupted(out, created, "SIGTERM", SIGTERM_EXIT)
    except (RuntimeError, ValueError) as exc:  # a missing dataset, a peer that died, bad data
        _remove_if_empty(out, created)
        fail(str(exc))


_SAID = {"SIGINT": "Ctrl-C", "SIGTERM": "SIGTERM"}


def _interrupted(out: Path, created: bool, signal_name: str, code: int) -> NoReturn:
    """Every peer is stopped by now: tidy up (:func:`_tidy`) and exit with ``code``."""
    _tidy(out, created, signal_name)
    sys.exit(code)


def _tidy(out: Path, created: bool, signal_name: str, late: bool = False) -> None:
    """Remove what the README says an interrupted run does not keep: the peers' directories
    (OUT/peers, scratch of process and inproc modes), and OUT itself if this run made it and
    nothing else is in it. Results written so far stay (results.json marked incomplete).
    ``late``: the signal was acted on by the watcher, the main thread being inside a long
    call (gossiplearn/sim/stopping.py honoured_within)."""
    shutil.rmtree(out / "peers", ignore_errors=True)
    kept = [name for name in _RUN_OUTPUTS if (out / name).exists()]
    _remove_if_empty(out, created)
    written = (
        f"kept what was written: {', '.join(kept)} (marked incomplete)"
        if kept
        else "no results written"
    )
    how = f"the run was stopped after {GRACE_S:g} s in a long call, " if late else ""
    typer.echo(
        f"gossiplearn: interrupted by {signal_name}; {how}every peer was stopped, {written}",
        err=True,
    )


def _remove_if_empty(out: Path, created: bool) -> None:
    """OUT, if this run created it and left nothing in it (a run that failed early)."""
    if created:
        with contextlib.suppress(OSError):
            out.rmdir()  # only if empty


def _prepare_out(out: Path, overwrite: bool) -> None:
    leftovers = [name for name in _RUN_OUTPUTS if (out / name).exists()]
    if leftovers and not overwrite:
        fail(
            f"{out} holds an earlier run ({', '.join(leftovers)}); use --overwrite or another --out"
        )
    for name in leftovers:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create --out {out} ({exc.strerror or exc}); give a directory you can write")
