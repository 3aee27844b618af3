"""results.json document and validation, atomic write, summary table and plots."""

import copy
import io
import json
import math
import stat
from pathlib import Path

import pytest
from rich.console import Console

from gossiplearn.peer.learning.trainer import TrainConfig
from gossiplearn.sim.report import (
    RESULTS_SCHEMA_VERSION,
    human_bytes,
    plot_results,
    results_document,
    summary_table,
    validate_results,
    write_results,
)
from gossiplearn.sim.results import MethodResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG = {"peers": 3, "rounds": 2, "partition": "dirichlet:0.3", "out": Path("/tmp/run")}


def methods() -> list[MethodResult]:
    return [
        MethodResult(
            "gossiplearn",
            [[0.5, 0.6, 0.7], [0.8, 0.9, 1.0]],
            bytes_per_peer=123456.0,
            wall_s=2.5,
            extra={"rounds_aborted": 1.0},
        ),
        MethodResult("local", [[0.4, 0.5, 0.6], [0.6, 0.7, 0.8]], wall_s=0.5),
        MethodResult("fedavg", [[0.3, 0.3, 0.3], [0.2, 0.9, 0.4]], bytes_per_peer=4096.0),
    ]


@pytest.fixture
def document() -> dict:
    return results_document(CONFIG, methods())


def test_document_shape(document):
    assert document["schema"] == RESULTS_SCHEMA_VERSION
    assert document["peers"] == ["peer-0", "peer-1", "peer-2"]
    assert document["config"]["out"] == "/tmp/run"
    assert list(document["methods"]) == ["gossiplearn", "local", "fedavg"]
    entry = document["methods"]["gossiplearn"]
    assert entry["final"] == [0.8, 0.9, 1.0]
    assert entry["summary"]["mean"] == pytest.approx(0.9)
    assert entry["summary"]["min"] == 0.8
    assert entry["bytes_per_peer"] == 123456.0
    assert entry["extra"] == {"rounds_aborted": 1.0}
    validate_results(document)


def test_document_round_trips_through_strict_json(document):
    loaded = json.loads(json.dumps(document, allow_nan=False))
    assert loaded == document
    validate_results(loaded)


def test_given_peer_ids_and_config_conversion():
    config = {"train": TrainConfig(), "hidden": (32, 16), "tags": {"b", "a"}, "lr": math.inf}
    doc = results_document(config, methods(), peer_ids=["a", "b", "c"])
    assert doc["peers"] == ["a", "b", "c"]
    assert doc["config"]["train"]["batch_size"] == TrainConfig().batch_size
    assert doc["config"]["hidden"] == [32, 16]
    assert doc["config"]["tags"] == ["a", "b"]
    assert doc["config"]["lr"] is None
    with pytest.raises(TypeError, match="object"):
        results_document({"bad": object()}, methods())


def test_nan_becomes_null():
    result = MethodResult("gossiplearn", [[0.5, math.nan]], wall_s=math.nan)
    doc = results_document({}, [result])
    entry = doc["methods"]["gossiplearn"]
    assert entry["final"] == [0.5, None]
    assert entry["summary"] == {"mean": None, "p10": None, "min": None}
    assert entry["wall_s"] is None
    json.dumps(doc, allow_nan=False)


def test_inconsistent_inputs_are_refused():
    with pytest.raises(ValueError, match="unique"):
        results_document({}, [methods()[0], methods()[0]])
    with pytest.raises(ValueError, match="2 accuracies for 3 peers"):
        results_document({}, [*methods(), MethodResult("fedper", [[0.1, 0.2]])])
    with pytest.raises(ValueError, match="accuracies for 2 peers"):
        results_document({}, methods(), peer_ids=["a", "b"])


def broken(document, edit):
    bad = copy.deepcopy(document)
    edit(bad)
    return bad


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("schema"), "missing key 'schema'"),
        (lambda d: d.pop("config"), "missing key 'config'"),
        (lambda d: d.pop("peers"), "missing key 'peers'"),
        (lambda d: d.pop("methods"), "missing key 'methods'"),
        (lambda d: d.update(schema=2), "version 2"),
        (lambda d: d.update(peers=["a", "a", "b"]), "repeat"),
        (lambda d: d["methods"]["local"].pop("summary"), "local: missing key 'summary'"),
        (lambda d: d["methods"]["local"]["summary"].pop("p10"), "missing key 'p10'"),
        (lambda d: d["methods"]["local"].pop("final"), "missing key 'final'"),
        (
            lambda d: d["methods"]["fedavg"]["accuracy_per_round"][0].pop(),
            r"fedavg.accuracy_per_round\[0\]: 2 accuracies for 3 peers",
        ),
        (lambda d: d["methods"]["fedavg"]["final"].append(0.5), "final: 4 accuracies"),
        (lambda d: d["methods"]["fedavg"]["final"].__setitem__(0, 0.25), "differs"),
        (
            lambda d: d["methods"]["local"]["accuracy_per_round"][1].__setitem__(1, math.nan),
            r"accuracy_per_round\[1\]\[1\]: nan is not a finite number",
        ),
        (lambda d: d["methods"]["local"].update(wall_s=math.inf), "wall_s: inf"),
        (lambda d: d["config"].update(lr=math.nan), r"config.lr: nan"),
        (lambda d: d["methods"]["local"]["summary"].update(mean=1.5), "outside"),
        (lambda d: d["methods"]["local"].update(bytes_per_peer=-1), "outside"),
        (lambda d: d["methods"]["local"].update(bytes_per_peer="1 KiB"), "expected a number"),
        (lambda d: d["methods"]["local"]["extra"].update(flag=True), "expected a number"),
        (lambda d: d["methods"].update(local=[]), "expected an object"),
    ],
)
def test_validate_rejects(document, edit, message):
    with pytest.raises(ValueError, match=message):
        validate_results(broken(document, edit))


def test_validate_rejects_non_objects():
    with pytest.raises(ValueError, match="expected an object"):
        validate_results([])  # type: ignore[arg-type]


def test_write_results_is_atomic_and_readable(tmp_path):
    out = tmp_path / "run"
    path = write_results(out, CONFIG, methods(), peer_ids=["x", "y", "z"])
    assert path == out / "results.json"
    assert [entry.name for entry in out.iterdir()] == ["results.json"]  # no temp file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    loaded = json.loads(path.read_text())
    validate_results(loaded)
    assert loaded["peers"] == ["x", "y", "z"]
    # Rewriting replaces the file in place, still without leftovers.
    write_results(out, CONFIG, methods()[:1])
    assert [entry.name for entry in out.iterdir()] == ["results.json"]
    assert list(json.loads(path.read_text())["methods"]) == ["gossiplearn"]


def test_summary_table_has_one_row_per_method():
    table = summary_table(methods())
    assert table.row_count == 3
    console = Console(file=io.StringIO(), width=120)
    console.print(table)
    text = console.file.getvalue()
    assert "gossiplearn" in text and "90.0%" in text and "120.6 KiB" in text and "2.5 s" in text


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 * 2**20, "5.0 MiB"),
        (3 * 2**40, "3072.0 GiB"),
    ],
)
def test_human_bytes(count, text):
    assert human_bytes(count) == text


def test_plot_results_writes_two_pngs(tmp_path):
    with_gap = MethodResult("fedper", [[0.2, math.nan, 0.4], [math.nan, math.nan, math.nan]])
    paths = plot_results(tmp_path, [*methods(), with_gap])
    assert [path.name for path in paths] == ["accuracy_per_round.png", "per_peer_accuracy.png"]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert sorted(entry.name for entry in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_the_per_peer_plot_keeps_each_peer_in_one_place():
    from gossiplearn.sim.report import peer_order

    local = MethodResult("local", [[0.9, 0.5, 0.7]])
    ours = MethodResult("gossiplearn", [[0.8, 0.9, 0.6]])
    order = peer_order([ours, local])
    assert order.tolist() == [1, 2, 0]  # by local-only accuracy, worst first
    # Without local-only, the first method orders the peers.
    assert peer_order([ours]).tolist() == [2, 0, 1]


def test_the_progress_bar_and_the_table_read_the_same_figure():
    from gossiplearn.sim.daemons import _accuracies_after, _result_from_documents

    def document(accuracies: list[float], current: float) -> dict[str, object]:
        history = [{"accuracy": a} for a in accuracies]
        return {
            "accuracy": current,
            "rounds": {"history": history, "completed": len(history)},
            "neighbours": [],
        }

    # Peer 0 is ahead (3 rounds, and already at a later accuracy); peer 1 has done 2.
    documents = [document([0.5, 0.6, 0.7], 0.7), document([0.4, 0.8], 0.8)]
    # The bar at 2 rounds done shows each peer after its 2nd round, not its latest figure.
    assert _accuracies_after(documents, 2) == [0.6, 0.8]
    result = _result_from_documents(documents, 2, wall_s=1.0)
    assert result.final == [0.6, 0.8] and result.accuracy_per_round[0] == [0.5, 0.4]


def test_process_mode_ends_its_progress_on_the_tables_figures(tmp_path, monkeypatch):
    """The bar's last update is the table's final row (mean accuracy and bytes sent), read
    off the same status documents: it once ended on the poll before the last one (bar 0.793 /
    360 KiB, table 85.0% / 440 KiB). Three fake daemons, each a round further per poll."""
    from types import SimpleNamespace

    import numpy as np

    import gossiplearn.peer.config
    from gossiplearn.sim import daemons
    from gossiplearn.sim.config import SimConfig

    rounds = 3
    polls = {0: 0, 1: 0, 2: 0}

    def status(port: int) -> dict:
        polls[port] += 1
        done = min(polls[port], rounds + 1)  # peer 2 is one round further than the others
        done = done if port != 2 else min(done + 1, rounds + 1)
        history = [{"accuracy": 0.1 * r + 0.01 * port} for r in range(1, done + 1)]
        return {
            "accuracy": history[-1]["accuracy"],
            "rounds": {"completed": done, "history": history},
            "neighbours": [{"bytes_out": 1000 * done + port}],
        }

    process = SimpleNamespace(
        poll=lambda: None, send_signal=lambda signum: None, wait=lambda timeout=None: 0
    )
    monkeypatch.setattr(
        daemons, "prepare_peers", lambda out, config, **_: [out / f"p{i}" for i in range(3)]
    )
    monkeypatch.setattr(
        gossiplearn.peer.config,
        "load_config",
        lambda d: SimpleNamespace(status=SimpleNamespace(port=int(d.name[1:]))),
    )
    monkeypatch.setattr(daemons, "fork_peer", lambda directory: process)
    monkeypatch.setattr(daemons, "_fetch_status", status)
    monkeypatch.setattr(daemons.time, "sleep", lambda seconds: None)
    reported: list[tuple[int, float, float]] = []
    config = SimConfig(peers=3, rounds=rounds, mode="process").validate()
    result = daemons.run_process(config, tmp_path, lambda *figures: reported.append(figures))
    assert reported[-1] == (
        rounds,
        pytest.approx(float(np.mean(result.final))),
        result.bytes_per_peer,
    )
    assert [r[0] for r in reported] == [1, 2, 3]


def test_the_per_peer_plot_does_not_join_peers_and_dp_runs_say_epsilon(tmp_path, monkeypatch):
    """Neighbouring x positions of the per-peer plot are different peers: markers, no line
    (the per-round plot keeps its lines). A DP run's plots name epsilon in their titles."""
    import matplotlib.figure

    from gossiplearn.sim.config import SimConfig
    from gossiplearn.sim.experiment import run_title

    drawn: dict[str, set[str]] = {}
    save = matplotlib.figure.Figure.savefig

    def seen(figure, *args, **kwargs):
        axes = figure.axes[0]
        drawn[axes.get_title()] = {line.get_linestyle() for line in axes.get_lines()}
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", seen)
    title = run_title(SimConfig(peers=3, rounds=2, dp_epsilon=8.0))
    assert (
        title
        == "digits, dirichlet:0.3, 3 peers, 2 rounds, process mode, DP epsilon 8 (delta 1e-05)"
    )
    assert run_title(SimConfig(peers=3, rounds=2)).endswith("process mode")
    plot_results(tmp_path, methods(), title)
    assert drawn == {
        f"Mean accuracy over peers, per round\n{title}": {"-"},
        f"Final accuracy per peer\n{title}": {"None"},
    }
