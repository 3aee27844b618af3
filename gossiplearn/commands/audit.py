"""``gossiplearn audit DIR``: how much a peer's model reveals about its training records
(membership inference: loss threshold and offline LiRA; see gossiplearn/privacy/audit.py).

Read-only and local: the daemon may be running (the checkpoint is replaced atomically and
no directory lock is taken); nothing is sent anywhere. Exit codes: 2 for an invalid
configuration or argument, 1 when the audit cannot run (no checkpoint yet, data or model
that cannot be loaded). A failure is one line on stderr, without a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from gossiplearn.commands.common import fail, peer_directory
from gossiplearn.peer.config import CHECKPOINT_DIR, ConfigError, load_config

#: Where the ROC plot goes without --plot, inside the peer directory.
DEFAULT_PLOT = Path("audit") / "roc.png"


def _interval(value: float, interval: tuple[float, float], percent: bool) -> str:
    if percent:
        return f"{value:.1%} [{interval[0]:.1%}, {interval[1]:.1%}]"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def render(report: Any) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from gossiplearn.privacy.exposure import FPR_1PCT, LOW_FPR, resolved

    table = Table(
        title=f"membership inference on {report.members} training and {report.non_members} "
        "held-out records (95% intervals)"
    )
    for column in ("attack", "AUC", "TPR @ 0.1% FPR", "TPR @ 1% FPR"):
        table.add_column(column)
    for attack in report.attacks:
        table.add_row(
            attack.title,
            _interval(attack.auc, attack.auc_ci, False),
            _interval(attack.tpr_at_low_fpr, attack.tpr_at_low_fpr_ci, True),
            _interval(attack.tpr_at_1pct_fpr, attack.tpr_at_1pct_fpr_ci, True),
        )
    notes = []
    for fpr in (LOW_FPR, FPR_1PCT):
        if not resolved(fpr, report.non_members):
            notes.append(
                f"{fpr:.1%} FPR needs {round(1 / fpr)} held-out records to measure; with "
                f"{report.non_members} it is the TPR at zero false alarms"
            )
    if report.reference_models:
        notes.append(
            f"LiRA: {report.reference_models} reference models, {report.reference_samples} "
            f"records and {report.reference_steps} steps each"
        )
    notes.append("an audit is a lower bound on what an attacker can learn, not a guarantee")
    colour = {"low": "green", "moderate": "yellow", "high": "red"}[report.verdict.level]
    return Group(
        table,
        Text("\n".join(f"note: {note}" for note in notes), style="dim"),
        Text(report.verdict.text, style=f"bold {colour}"),
    )


def audit(
    directory: Path = typer.Argument(
        ..., help="The peer directory (from `gossiplearn init`).", metavar="DIR"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Where to write the ROC plot (PNG, log-log axes). Default: DIR/audit/roc.png.",
        metavar="PATH",
    ),
    references: int = typer.Option(
        4, "--references", help="Reference models for LiRA (0: the loss attack only)."
    ),
    reference_steps: int | None = typer.Option(
        None,
        "--reference-steps",
        help="Mini-batches per reference model (default: as many epochs as the peer trained, "
        "capped).",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of every random choice (same seed, same figures)."
    ),
    samples: int = typer.Option(
        500, "--samples", help="At most this many training records, and as many held-out."
    ),
) -> None:
    """Audit how much the peer's model reveals about its training records (membership
    inference on its own data). Local and read-only: works while the daemon runs."""
    peer_directory(directory)
    try:
        config = load_config(directory)
    except ConfigError as exc:
        fail(str(exc), 2)
    from gossiplearn.peer.learning.checkpoint import MODEL_FILE

    if not (directory / CHECKPOINT_DIR / MODEL_FILE).exists():
        fail(
            f"{directory} has no checkpoint yet (nothing to audit): run the daemon first, "
            f"`gossiplearn run {directory}`; it writes one after each round",
            1,
        )
    import torch

    from gossiplearn.peer.learning.checkpoint import CheckpointError
    from gossiplearn.peer.learning.data import DataLoaderError
    from gossiplearn.peer.learning.split_model import SplitModelError
    from gossiplearn.peer.learning.trainer import DeviceUnavailable
    from gossiplearn.privacy.audit import AuditSettings, parts_from_directory, plot_roc, run_audit
    from gossiplearn.privacy.exposure import AuditError

    try:
        settings = AuditSettings(
            references=references, samples=samples, seed=seed, reference_steps=reference_steps
        )
    except ValueError as exc:
        fail(f"{exc}: check --references, --samples and --reference-steps", 2)
    torch.set_num_threads(max(1, config.training.threads))
    known = (AuditError, CheckpointError, DataLoaderError, SplitModelError, DeviceUnavailable)

    def progress(done: int, total: int) -> None:
        if done < total:
            typer.echo(f"training reference model {done + 1}/{total} ...", err=True)

    try:
        parts, meta = parts_from_directory(directory, config)
        report = run_audit(parts, settings, progress)
    except known as exc:
        fail(" ".join(str(exc).split()))
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line
        summary = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        fail(f"the audit failed on an unexpected error ({summary})")
    plot_path: Path | None = plot or directory / DEFAULT_PLOT
    try:
        plot_roc(report, plot or directory / DEFAULT_PLOT)
    except (OSError, ValueError) as exc:
        if plot is not None:
            fail(f"cannot write the plot to {plot} ({exc}): choose another --plot PATH")
        # The default place may be read-only for whoever audits: the figures still count.
        typer.echo(f"gossiplearn: no ROC plot ({exc}); choose a place with --plot PATH", err=True)
        plot_path = None

    if as_json:
        document = {
            "directory": str(directory),
            "checkpoint": {
                "rounds_completed": meta.rounds_completed,
                "model_digest": meta.model_digest,
                "saved_at": meta.saved_at,
            },
            **report.as_dict(),
            "plot": None if plot_path is None else str(plot_path),
        }
        typer.echo(json.dumps(document, indent=2, sort_keys=True))
        if plot_path is not None:
            typer.echo(f"ROC plot written to {plot_path}", err=True)
        return
    from rich.console import Console

    Console().print(render(report))
    if plot_path is not None:
        typer.echo(f"ROC plot written to {plot_path}")
