"""A simulation run's results: the ``results.json`` document, a summary table and plots.

``results.json`` (schema version 1) is one JSON object; this table (Markdown, as in
docs/simulation.md) is its reference:

| key | meaning |
|---|---|
| `schema` | results schema version (1); readers reject other versions |
| `config` | the run's configuration: the options that applied (with `--model`, `--data`, `--trainer`: their `module:function` names and `*_options`, without the built-in dataset, partition or MLP they replaced), tuples as lists, paths as strings |
| `complete` | `true` once every method has run all its rounds; `false` while the run goes on (the file is rewritten after every round of every method) and for a run a signal stopped |
| `interrupted` | `null`, or `"SIGINT"` / `"SIGTERM"`: the signal that stopped the run (what completed before it is kept) |
| `peers` | peer ids (`"peer-0"`, `"peer-1"`, ... unless given); index p of every per-peer list is `peers[p]` |
| `methods` | one entry per method run, keyed by name: `gossiplearn`, `local`, `local-ft`, `fedavg`, `fedavg-ft`, `fedper`, `fedper-plain`, in the order they ran |
| `methods.NAME.accuracy_per_round` | `[round][peer]`: the peer's accuracy on its own held-out data after that round, in [0, 1]; a round not evaluated (`--eval-every`) is a row of `null` |
| `methods.NAME.final` | `[peer]`: the last evaluated row of `accuracy_per_round` (`[]` if none) |
| `methods.NAME.rounds_done` | rounds the method completed (the rows of `accuracy_per_round`) |
| `methods.NAME.evaluated_rounds` | the rounds (1-based) after which every peer was evaluated |
| `methods.NAME.complete` | `false` while the method runs or if a signal stopped it |
| `methods.NAME.steps_per_round` | optimizer steps per peer per round, `{train, head, total}` (means; `head`: fine-tuning the head after an average), counted from every optimizer step taken; `null` (or a part `null`) where they could not be counted: a user's `--trainer` in process mode's daemons (inproc mode counts only the `total`) |
| `methods.NAME.summary` | `{mean, p10, min}` of `final` |
| `methods.NAME.bytes_per_peer` | mean bytes each peer sent over the whole run (0 for `local`) |
| `methods.NAME.wall_s` | wall-clock seconds the method took |
| `methods.NAME.extra` | method-specific figures, `{name: number}` (e.g. `train_loss`; with `--dp-epsilon`, `epsilon_spent_mean` and `epsilon_spent_max` over the peers) |
| `methods.NAME.audit` | only with `--audit`: the membership-inference audit of each peer's final model on its own data (members: its training set; non-members: its held-out data), `{auc_loss, auc_lira, tpr_at_1pct_lira, mean_auc_loss, mean_auc_lira, max_auc_lira}`: the first three `[peer]` (null: too few records to audit), the rest over the peers; AUCs and TPRs in [0, 1]; a lower bound on leakage |

Every number is a finite JSON number: a NaN or infinite value is written as ``null`` (e.g. an
accuracy a peer never reported, or the summary of such a peer set).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from gossiplearn.fileio import write_atomically
from gossiplearn.sim.results import MethodResult

RESULTS_SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
ACCURACY_PLOT_FILE = "accuracy_per_round.png"
PER_PEER_PLOT_FILE = "per_peer_accuracy.png"

_TOP_KEYS = ("schema", "config", "peers", "methods")
_STEP_KEYS = ("train", "head", "total")
_METHOD_KEYS = ("accuracy_per_round", "final", "summary", "bytes_per_peer", "wall_s", "extra")
_SUMMARY_KEYS = ("mean", "p10", "min")


def _number(value: float) -> float | None:
    """A finite float, or None for NaN/infinity (JSON has no such numbers)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(value: object) -> object:
    """``value`` as plain JSON types: mappings, sequences, paths, numpy and dataclasses too."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float | np.floating):
        return _number(float(value))
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, Sequence | np.ndarray | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return [_jsonable(item) for item in items]
    raise TypeError(f"cannot store a {type(value).__name__} in results.json: {value!r}")


def _maybe_number(value: float | None) -> float | None:
    return None if value is None else _number(value)


def _method_document(method: MethodResult) -> dict[str, Any]:
    steps = method.steps_per_round
    return {
        "accuracy_per_round": [[_number(a) for a in row] for row in method.accuracy_per_round],
        "final": [_number(a) for a in method.final],
        "summary": {key: _number(value) for key, value in method.summary().items()},
        "bytes_per_peer": _number(method.bytes_per_peer),
        "wall_s": _number(method.wall_s),
        "extra": {str(key): _number(value) for key, value in method.extra.items()},
        "rounds_done": method.rounds_done,
        "evaluated_rounds": method.evaluated_rounds,
        "complete": method.complete,
        "steps_per_round": None
        if steps is None
        else {key: _maybe_number(steps.get(key)) for key in _STEP_KEYS},
    } | ({} if method.audit is None else {"audit": _jsonable(method.audit)})


def results_document(
    config: Mapping[str, object],
    methods: Sequence[MethodResult],
    peer_ids: Sequence[str] | None = None,
    complete: bool = True,
    interrupted: str | None = None,
) -> dict[str, Any]:
    """The ``results.json`` content for ``methods`` (validated before it is returned)."""
    names = [method.name for method in methods]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"method names must be unique, repeated: {', '.join(duplicates)}")
    if peer_ids is None:
        # The peer count is whatever the methods agree on; validation catches a disagreement.
        rows = methods[0].accuracy_per_round if methods else []
        count = len(rows[0]) if rows else 0
        peer_ids = [f"peer-{index}" for index in range(count)]
    document = {
        "schema": RESULTS_SCHEMA_VERSION,
        "config": _jsonable(config),
        "complete": complete,
        "interrupted": interrupted,
        "peers": [str(peer) for peer in peer_ids],
        "methods": {method.name: _method_document(method) for method in methods},
    }
    validate_results(document)
    return document


def write_results(
    out_dir: Path,
    config: Mapping[str, object],
    methods: Sequence[MethodResult],
    peer_ids: Sequence[str] | None = None,
    complete: bool = True,
    interrupted: str | None = None,
) -> Path:
    """Write ``out_dir/results.json`` atomically (a reader never sees half a file)."""
    document = results_document(config, methods, peer_ids, complete, interrupted)
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_FILE
    write_atomically(path, lambda temp: temp.write_text(text, encoding="utf-8"), mode=0o644)
    return path


def _check_number(
    value: object, where: str, low: float | None = None, high: float | None = None
) -> None:
    """A finite number within [low, high], or null."""
    if value is None:
        return
    # bool is an int subclass, but True is no accuracy.
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{where}: expected a number or null, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a finite number (write null instead)")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{where}: {value} is outside [{low}, {high}]")


def _check_keys(mapping: object, keys: Sequence[str], where: str) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise ValueError(f"{where}: expected an object, got {type(mapping).__name__}")
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r}")
    return mapping


def _check_finite_everywhere(value: object, where: str) -> None:
    """No NaN or infinity anywhere (config included): strict JSON cannot carry them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a finite number (write null instead)")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite_everywhere(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite_everywhere(item, f"{where}[{index}]")


def _check_accuracies(row: object, peers: int, where: str) -> list[Any]:
    if not isinstance(row, list):
        raise ValueError(f"{where}: expected a list of per-peer accuracies")
    if len(row) != peers:
        raise ValueError(f"{where}: {len(row)} accuracies for {peers} peers")
    for index, accuracy in enumerate(row):
        _check_number(accuracy, f"{where}[{index}]", low=0.0, high=1.0)
    return row


def _check_method(method: object, peers: int, where: str) -> None:
    entry = _check_keys(method, _METHOD_KEYS, where)
    rounds = entry["accuracy_per_round"]
    if not isinstance(rounds, list):
        raise ValueError(f"{where}.accuracy_per_round: expected a list of rounds")
    for index, row in enumerate(rounds):
        _check_accuracies(row, peers, f"{where}.accuracy_per_round[{index}]")
    evaluated = [row for row in rounds if any(value is not None for value in row)]
    final = _check_accuracies(entry["final"], peers if evaluated else 0, f"{where}.final")
    if evaluated and final != evaluated[-1]:
        raise ValueError(
            f"{where}.final: differs from the last evaluated round of accuracy_per_round"
        )
    if "rounds_done" in entry and entry["rounds_done"] != len(rounds):
        raise ValueError(f"{where}.rounds_done: {entry['rounds_done']} for {len(rounds)} rounds")
    if "complete" in entry and not isinstance(entry["complete"], bool):
        raise ValueError(f"{where}.complete: expected true or false")
    steps = entry.get("steps_per_round")
    if steps is not None:
        _check_keys(steps, _STEP_KEYS, f"{where}.steps_per_round")
        for key in _STEP_KEYS:
            _check_number(steps[key], f"{where}.steps_per_round.{key}", low=0.0)
    summary = _check_keys(entry["summary"], _SUMMARY_KEYS, f"{where}.summary")
    for key in _SUMMARY_KEYS:
        _check_number(summary[key], f"{where}.summary.{key}", low=0.0, high=1.0)
    _check_number(entry["bytes_per_peer"], f"{where}.bytes_per_peer", low=0.0)
    _check_number(entry["wall_s"], f"{where}.wall_s", low=0.0)
    extra = _check_keys(entry["extra"], (), f"{where}.extra")
    for key, value in extra.items():
        _check_number(value, f"{where}.extra.{key}")
    if "audit" in entry:
        _check_audit(entry["audit"], peers, f"{where}.audit")


_AUDIT_PER_PEER = ("auc_loss", "auc_lira", "tpr_at_1pct_lira")
_AUDIT_OVER_PEERS = ("mean_auc_loss", "mean_auc_lira", "max_auc_lira")


def _check_audit(audit: object, peers: int, where: str) -> None:
    entry = _check_keys(audit, _AUDIT_PER_PEER + _AUDIT_OVER_PEERS, where)
    for key in _AUDIT_PER_PEER:
        values = entry[key]
        if not isinstance(values, list) or len(values) != peers:
            raise ValueError(f"{where}.{key}: expected a list of {peers} per-peer values")
        for index, value in enumerate(values):
            _check_number(value, f"{where}.{key}[{index}]", low=0.0, high=1.0)
    for key in _AUDIT_OVER_PEERS:
        _check_number(entry[key], f"{where}.{key}", low=0.0, high=1.0)


def validate_results(document: dict[str, Any]) -> None:
    """Raise ValueError naming the first way ``document`` breaks the results.json schema."""
    _check_keys(document, _TOP_KEYS, "results")
    _check_finite_everywhere(document, "results")
    if document["schema"] != RESULTS_SCHEMA_VERSION:
        raise ValueError(
            f"results.schema: version {document['schema']!r}, expected {RESULTS_SCHEMA_VERSION}"
        )
    _check_keys(document["config"], (), "results.config")
    if not isinstance(document.get("complete", True), bool):
        raise ValueError("results.complete: expected true or false")
    if document.get("interrupted") not in (None, "SIGINT", "SIGTERM"):
        raise ValueError('results.interrupted: expected null, "SIGINT" or "SIGTERM"')
    peers = document["peers"]
    if not isinstance(peers, list) or not all(isinstance(peer, str) for peer in peers):
        raise ValueError("results.peers: expected a list of peer id strings")
    if len(set(peers)) != len(peers):
        raise ValueError("results.peers: peer ids repeat")
    methods = _check_keys(document["methods"], (), "results.methods")
    for name, method in methods.items():
        _check_method(method, len(peers), f"results.methods.{name}")


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%" if math.isfinite(value) else "-"


def human_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units)."""
    if not math.isfinite(count):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def steps_text(steps: Mapping[str, float | None] | None) -> str:
    """``{"train": 10, "head": 10, "total": 20}`` -> ``"10+10"`` (train+head per peer and
    round); the total alone when the parts are unknown; ``"-"`` when nothing was counted."""
    if steps is None or steps.get("total") is None:
        return "-"

    def number(value: float) -> str:
        return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"

    if steps.get("train") is None or steps.get("head") is None:
        return number(float(steps["total"]))  # type: ignore[arg-type]
    return f"{number(float(steps['train']))}+{number(float(steps['head']))}"  # type: ignore[arg-type]


def summary_table(methods: Sequence[MethodResult]) -> Table:
    """One row per method: final accuracy (mean, p10, min), optimizer steps per peer and
    round (train+head), bytes sent per peer, wall time; the rounds done when a method did not
    finish; after ``--audit``, the membership-inference AUC of the most exposed peer (offline
    LiRA's; the loss attack's without reference models)."""
    audited = any(method.audit is not None for method in methods)
    unfinished = any(not method.complete for method in methods)
    table = Table(
        title="Final accuracy on each peer's own held-out data",
        caption="steps: optimizer steps per peer and round, training + head fine-tune",
    )
    table.add_column("method")
    columns = ["mean", "p10", "min", "steps", "sent / peer", "wall"]
    if unfinished:
        columns.append("rounds")
    if audited:
        columns.append("MIA AUC (max)")
    for column in columns:
        table.add_column(column, justify="right")
    for method in methods:
        summary = method.summary()
        cells = [
            *(_percent(summary[key]) for key in _SUMMARY_KEYS),
            steps_text(method.steps_per_round),
            human_bytes(method.bytes_per_peer),
            f"{method.wall_s:.1f} s",
        ]
        if unfinished:
            cells.append(str(method.rounds_done) + ("" if method.complete else " (stopped)"))
        if audited:
            cells.append(_auc(_max_auc(method.audit)))
        table.add_row(method.name, *cells)
    return table


def _max_auc(audit: Mapping[str, Any] | None) -> float | None:
    if audit is None:
        return None
    if audit.get("max_auc_lira") is not None:
        return float(audit["max_auc_lira"])
    known = [value for value in audit.get("auc_loss", []) if value is not None]
    return max(known) if known else None


def _auc(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _mean_of_reported(row: Sequence[float]) -> float:
    """Mean over the peers that reported (non-NaN): one missing peer must not blank a point."""
    values = np.asarray(row, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def peer_order(methods: Sequence[MethodResult], by: str = "local") -> np.ndarray:
    """Peer indices sorted by the final accuracy of method ``by`` (else the first method):
    the per-peer plot puts every method's peer p at the same place."""
    reference = next((m for m in methods if m.name == by), methods[0] if methods else None)
    if reference is None:
        return np.arange(0)
    return np.argsort(np.asarray(reference.final, dtype=np.float64), kind="stable")


def plot_results(out_dir: Path, methods: Sequence[MethodResult], run_name: str = "") -> list[Path]:
    """Write the mean-accuracy-per-round and per-peer final accuracy plots (PNG), titled with
    ``run_name`` (the dataset, peers, partition and rounds)."""
    import matplotlib

    # Headless: no display on simulation machines, and no GUI event loop wanted.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(figure: Any, name: str) -> None:
        path = out_dir / name
        try:
            write_atomically(
                path, lambda temp: figure.savefig(temp, format="png", dpi=120), mode=0o644
            )
        finally:
            plt.close(figure)
        written.append(path)

    def line_plot(
        series: Sequence[np.ndarray],
        xlabel: str,
        ylabel: str,
        title: str,
        name: str,
        joined: bool = True,
    ) -> None:
        """One series per method over 1, 2, ... (rounds, or peer ranks): a line through the
        points when neighbours on x belong together (rounds), markers alone when they do not
        (different peers)."""
        figure, axes = plt.subplots(figsize=(7, 4.5))
        markers = "os^Dv<>ph*"
        for index, (method, values) in enumerate(zip(methods, series, strict=True)):
            if joined:  # rounds not evaluated (NaN, --eval-every) are left out of the line
                x = np.arange(1, len(values) + 1)
                shown = np.isfinite(values)
                axes.plot(x[shown], values[shown], marker=".", label=method.name)
            else:
                axes.plot(
                    np.arange(1, len(values) + 1),
                    values,
                    linestyle="none",
                    marker=markers[index % len(markers)],
                    markersize=6,
                    alpha=0.8,
                    label=method.name,
                )
        axes.set(xlabel=xlabel, ylabel=ylabel, ylim=(0, 1), title=title)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds and ranks are whole
        axes.grid(alpha=0.3)
        if methods:
            axes.legend()
        save(figure, name)

    suffix = f"\n{run_name}" if run_name else ""
    line_plot(
        [np.asarray([_mean_of_reported(row) for row in m.accuracy_per_round]) for m in methods],
        "round",
        "mean accuracy",
        "Mean accuracy over peers, per round" + suffix,
        ACCURACY_PLOT_FILE,
    )
    order = peer_order(methods)
    if any(m.name == "local" for m in methods):
        reference = "local-only"
    else:
        reference = methods[0].name if methods else "no"
    line_plot(
        [np.asarray(m.final, dtype=np.float64)[order] for m in methods],
        f"peer (sorted by {reference} accuracy; the same peer at each x)",
        "final accuracy",
        "Final accuracy per peer" + suffix,
        PER_PEER_PLOT_FILE,
        joined=False,
    )
    return written
