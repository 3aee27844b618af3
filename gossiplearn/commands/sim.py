"""``gossiplearn sim``: a local multi-peer network on a non-IID split of a real dataset (or your
model, data and trainer: ``--model``, ``--data``, ``--trainer``), gossiplearn against
local-only, FedAvg and FedPer on the same split and budget, with a progress bar, a results
table, ``DIR/results.json`` and PNG plots."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import typer

from gossiplearn.commands.common import fail

#: What a previous run leaves in --out (removed only with --overwrite).
_RUN_OUTPUTS = ("peers", "results.json", "accuracy_per_round.png", "per_peer_accuracy.png")


def _parse_hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"--hidden takes sizes like 64,64, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter("--hidden needs at least one positive size")
    return sizes


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
    lr: float = typer.Option(0.05, help="SGD learning rate."),
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
    dp_epsilon: float = typer.Option(
        0.0,
        help="Differential privacy: every method trains with DP-SGD within this epsilon per "
        "peer over --rounds (0: off). Needs pip install 'gossiplearn[dp]'.",
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
    overwrite: bool = typer.Option(False, help="Replace the results of an earlier run in --out."),
) -> None:
    """Run a local multi-peer simulation and compare gossiplearn with the baselines."""
    from gossiplearn.sim.config import SimConfig

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
    _prepare_out(out, overwrite)
    # SIGTERM (a service manager, `kill`, a CI timeout) must stop the peers as Ctrl-C does:
    # in process mode they run in sessions of their own, which the signal does not reach.
    signal.signal(signal.SIGTERM, _sigterm_as_sigint)

    from gossiplearn.peer.learning.lean import avoid_dynamo_import
    from gossiplearn.sim.experiment import run_experiment

    avoid_dynamo_import()  # memory mode and the baselines train here: no torch._dynamo import

    try:
        run_experiment(config, out, with_baselines=baselines)
    except KeyboardInterrupt:
        typer.echo("interrupted: every peer was stopped; no results written", err=True)
        sys.exit(130)
    except (RuntimeError, ValueError) as exc:  # a missing dataset, a peer that died, a bad spec
        fail(str(exc))


def _sigterm_as_sigint(signum: int, frame: object) -> None:
    # Re-raised as SIGINT so that whoever handles Ctrl-C right now (trio inside a run, Python's
    # KeyboardInterrupt otherwise) handles this too, at a safe point.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a non-interactive shell (`... &`): SIGINT is ignored,
        # and passing it on would be too.
        raise KeyboardInterrupt
    os.kill(os.getpid(), signal.SIGINT)


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
    out.mkdir(parents=True, exist_ok=True)
