"""README.md and docs/*.md say what the code does, and every command they show is run by a test.

- Every code block says what it is: ``sh`` (commands a user types), ``text`` (output),
  ``toml`` (config, parsed against the schema here) or ``python`` (compiled here).
- Every command of a ``sh`` block, and every ``python benchmarks/...`` command written inline
  (the tables of performance.md), names the test that runs it in :data:`RUN_BY`, or why none
  can in :data:`NOT_RUN`; the test must exist. The README's quick start is run as written by
  tests/test_readme.py.
- Every ``gossiplearn`` command shown parses with the real CLI (its subcommand and options
  exist, its values convert), and every option of a ``python benchmarks|examples/X.py``
  command is one the script defines.
- Links between the pages resolve, anchors included; the metrics operating.md lists are the
  metrics the daemon serves; the modules architecture.md names exist; results.json's reference
  table is the one in gossiplearn/sim/report.py.
- The commands no other test runs are run here: some verbatim (``init`` of a user's model, the
  audit block, the size plot redrawn from its figures), the benchmarks at small sizes.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
BIN = Path(sys.executable).parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"sh", "text", "toml", "python"}
HERE = "tests/test_docs.py"
SMALL = f"{HERE}::test_a_documented_benchmark_runs_at_a_small_size"

#: Each command shown (normalized: shell words joined by one space) -> the test that runs it:
#: as written, or the same command on smaller sizes or other directories (said after "#").
RUN_BY: dict[str, str] = {
    # README
    "make sim": "tests/sim/test_modes.py::test_sim_command_process_mode_runs_real_daemons",  # its `gossiplearn sim --mode process`, 2 rounds
    # README: across the internet (configured as written; run across the lab by tests/peer/test_wan.py)
    "gossiplearn keys show org-a": "tests/commands/test_internet_example.py::test_the_internet_example_configures_as_written",
    "gossiplearn allow org-c /ip4/198.51.100.10/tcp/4001/p2p/12D3KooWMbbPVGsZYh3ChQjue712NHHGNybRRXwnuSpezYjGbCDS /dns4/gossip.org-b.example/tcp/4001/p2p/12D3KooWCugzopk9fYBy1pvYVi94Qr2y9PL4CjSpYZUaXir3YWb7": "tests/commands/test_internet_example.py::test_the_internet_example_configures_as_written",
    "gossiplearn allow org-a 12D3KooWM82bDYYgzgXaayHDdVciFe3bGvJ69qHnbSztNUJ933VQ": "tests/commands/test_internet_example.py::test_the_internet_example_configures_as_written",
    # docs/internet.md
    "python benchmarks/wan_bench.py --plot docs/wan_round_time.png": "tests/testing/test_wan_bench.py::test_the_wan_bench_prints_one_json_line_per_point",  # one small point
    "python benchmarks/wan_bench.py --n 1e7 --rtt 150 --mbit 10 --deadlines default": "tests/testing/test_wan_bench.py::test_the_wan_bench_runs_a_deployed_peers_deadlines",  # a small point
    "python benchmarks/wan_bench.py --n 1e7 --rtt 150 --mbit 10 --deadlines default --round assumed_mbit=10 --round round_timeout_s=300": "tests/testing/test_wan_bench.py::test_the_wan_bench_runs_a_deployed_peers_deadlines",  # a small point
    "python benchmarks/wan_bench.py --n 1e7 --rtt 300 --mbit 100 --rounds 1 --transport libp2p": "tests/testing/test_wan_bench.py::test_the_wan_bench_prints_one_json_line_per_point",  # a small point, over the bulk channel
    "python benchmarks/wan_bench.py --n 1e7 --rtt 150 --mbit 20 --loss 0.01 --deadlines default": "tests/testing/test_wan_bench.py::test_the_wan_bench_runs_a_deployed_peers_deadlines",  # a small point, no loss
    "python benchmarks/wan_bench.py --from-json docs/wan_round_time.jsonl --plot docs/wan_round_time.png": "tests/testing/test_wan_bench.py::test_the_plot_is_redrawn_from_its_figures_as_written",
    # docs/operating.md
    "gossiplearn init ./org-a --listen /ip4/0.0.0.0/tcp/4001 --shard 0/3": "tests/commands/test_cli.py::test_init_creates_a_private_identity_and_a_documented_config",
    "gossiplearn keys show ./org-a": "tests/commands/test_mistakes.py::test_keys_show_prints_the_full_dialable_address",
    "gossiplearn allow ./org-a /ip4/192.0.2.7/tcp/4001/p2p/PEER_ID_B": "tests/commands/test_cli.py::test_allow_takes_peer_ids_and_multiaddrs",
    "gossiplearn run ./org-a": "tests/peer/test_daemon_e2e.py::test_three_peers_average_securely_and_survive_restart",
    "gossiplearn status ./org-a": "tests/commands/test_mistakes.py::test_a_lone_daemon_says_why_nothing_happens",
    "gossiplearn status --addr /ip4/192.0.2.7/tcp/4001/p2p/PEER_ID_B --identity ./org-a": "tests/peer/test_daemon_e2e.py::test_three_peers_average_securely_and_survive_restart",
    "gossiplearn evidence ./org-a": "tests/commands/test_evidence.py::test_a_kept_proof_is_private_listed_and_cleared",
    "gossiplearn evidence ./org-a --clear PEER_ID_B": "tests/commands/test_evidence.py::test_a_kept_proof_is_private_listed_and_cleared",
    "gossiplearn audit ./org-a": f"{HERE}::test_the_audit_block_runs_as_written",
    # docs/privacy.md
    "gossiplearn audit ./org-a --json --seed 1": f"{HERE}::test_the_audit_block_runs_as_written",
    "gossiplearn audit ./org-a --references 8 --samples 1000 --reference-steps 2000": f"{HERE}::test_the_audit_block_runs_as_written",
    "gossiplearn sim --mode memory --peers 4 --rounds 10 --dp-epsilon 8 --out dp-8": "tests/privacy/test_dp.py::test_sim_memory_mode_trains_every_method_with_dp",  # 3 rounds
    "gossiplearn sim --mode memory --peers 4 --rounds 10 --out no-dp": "tests/sim/test_modes.py::test_sim_command_memory_mode_writes_results_and_plots",  # 2 rounds
    "python benchmarks/privacy_bench.py --dataset digits --peers 6 --rounds 5 --epsilons 8,none": "tests/sim/test_privacy_bench.py::test_privacy_bench_prints_one_json_line",  # 3 peers, 2 rounds
    "python benchmarks/privacy_bench.py": "tests/sim/test_privacy_bench.py::test_privacy_bench_prints_one_json_line",
    "python benchmarks/privacy_bench.py --dataset fashion-mnist --peers 10 --rounds 10 --epsilons 8,none": "tests/sim/test_privacy_bench.py::test_privacy_bench_prints_one_json_line",  # on digits
    # docs/api.md
    "PYTHONPATH=examples gossiplearn init ./org-a --model digits_cnn:model --model-option channels=16 --dataset digits --shard 0/3": f"{HERE}::test_init_with_a_users_model_runs_as_written",
    'gossiplearn init ./org-b --model mypkg.models:resnet --model-option width=32 --data mypkg.data:shard --data-option site="b" --trainer mypkg.train:Trainer': "tests/commands/test_bring_your_own.py::test_init_with_a_good_model_says_what_it_checked",  # with the tests' user_models
    "python examples/tabular_regression.py ./org-a --org 0 --orgs 3": "tests/test_api.py::test_three_processes_with_their_own_loops_beat_training_alone",
    "PYTHONPATH=examples gossiplearn sim --peers 4 --rounds 8 --mode memory --model next_token_gru:model --data next_token_gru:data --trainer next_token_gru:NextTokenTrainer": "tests/test_examples.py::test_a_sequence_model_with_its_own_trainer_beats_training_alone",
    "PYTHONPATH=examples python examples/digits_cnn.py": "tests/test_examples.py::test_a_cnn_through_init_allow_run_and_status",
    # docs/simulation.md
    "gossiplearn sim --peers 8 --rounds 10 --dataset digits --partition dirichlet:0.3 --group-size 4 --mode process --seed 0 --out sim-out": "tests/sim/test_modes.py::test_sim_command_process_mode_runs_real_daemons",  # 4 peers, 2 rounds
    "gossiplearn sim --peers 4 --rounds 5 --mode process --seed 1 --out out/sim-1": "tests/sim/test_modes.py::test_sim_command_process_mode_runs_real_daemons",
    "gossiplearn sim --peers 4 --rounds 5 --mode process --seed 2 --out out/sim-2": "tests/sim/test_modes.py::test_sim_command_process_mode_runs_real_daemons",
    "gossiplearn sim --mode process --ray auto --peers 100 --rounds 20 --peer-cpus 0.5": "tests/sim/test_ray.py::test_six_daemons_on_two_nodes_complete_their_rounds",  # 6 peers, 3 rounds, on a 2-node Cluster
    'gossiplearn sim --mode memory --peers 6 --rounds 20 --seed 1 --model mytask:model --model-option hidden=64 --data mytask:data --data-option lines=2000 --data-option seed=3 --trainer mytask:Trainer --trainer-option lr=0.01 --trainer-option steps=10 --methods gossiplearn,fedper-plain,fedavg-ft --eval-every 5 --out run-1': "tests/sim/test_research_task.py::test_a_researchers_task_stopped_half_way_keeps_its_completed_rounds",  # its task (tests/sim/research_task.py), 4 peers, 6 rounds
    "gossiplearn sim --mode memory --peers 8 --rounds 10 --seed 0 --methods gossiplearn,local,local-ft,fedavg,fedavg-ft,fedper,fedper-plain --out all-methods": "tests/sim/test_sim_methods.py::test_sim_runs_the_methods_asked_for_and_shows_their_steps",  # 3 of the methods, 3 peers, 3 rounds
    "python benchmarks/learning_bench.py --dataset fashion-mnist --peers 10,50 --rounds 30": SMALL,
    "python benchmarks/learning_bench.py --dataset fashion-mnist --peers 10,50 --rounds 30 --group-size 8": SMALL,
    "python benchmarks/learning_bench.py --dataset digits --peers 4,8 --rounds 5,20 --modes process,memory --seed 0": SMALL,
    "python benchmarks/learning_bench.py --dataset fashion-mnist --peers 10 --rounds 30 --poison zero": SMALL,
    "python benchmarks/learning_bench.py --dataset fashion-mnist --peers 10 --rounds 30 --poison zero --local-reference": SMALL,
    # docs/performance.md
    "python benchmarks/round_bench.py --net memory --n 100000,10000000": SMALL,
    "python benchmarks/round_bench.py --net memory --k 4 --n 10000000 --ring 16": SMALL,
    "python benchmarks/round_bench.py --net memory --k 4 --n 10000000 --repeats 3": SMALL,
    "python benchmarks/learning_bench.py --dataset digits --peers 8 --rounds 20 --rings 32,16,8 --clip 4": SMALL,
    "python benchmarks/learning_bench.py --dataset fashion-mnist --peers 10 --rounds 20 --rings 32,16": SMALL,
    "python benchmarks/round_bench.py --net libp2p": SMALL,
    "python benchmarks/round_bench.py --net libp2p --n 1000000,10000000": SMALL,
    "python benchmarks/scale_bench.py": SMALL,
    "python benchmarks/scale_bench.py --peers 1000 --rounds 20": SMALL,
    "python benchmarks/scale_bench.py --peers 10000 --rounds 20": SMALL,
    "python benchmarks/crypto_bench.py": SMALL,
    "python benchmarks/idle_bench.py": SMALL,
    "python benchmarks/insider_bench.py": SMALL,
    "python benchmarks/insider_bench.py --classes bulk_starvation": SMALL,
    "python benchmarks/round_sizes.py --from-json docs/round_time_vs_size.jsonl --plot docs/round_time_vs_size.png": f"{HERE}::test_the_size_plot_is_redrawn_from_its_figures_as_written",
    "python benchmarks/churn_bench.py": "tests/sim/test_churn.py",  # its scenario, 8 peers, 90 s
    "python benchmarks/fuzz_bench.py": "tests/peer/net/test_live_fuzz.py",  # 3,000 messages
    "python benchmarks/hostile_bench.py": "tests/peer/net/test_hostile.py",  # and test_strangers.py, test_clock_skew.py
    "python benchmarks/checkpoint_crash_bench.py": "tests/peer/learning/test_checkpoint_crash.py",  # 16 trials
    "python benchmarks/soak_bench.py": "tests/sim/test_soak.py",  # 3 peers, 45 s
    # docs/protocol.md
    "python -m pytest tests/protocol/test_chaos_insider.py": "tests/protocol/test_chaos_insider.py::test_the_chaos_insider_breaks_no_property",
}  # fmt: skip

#: Commands shown that no test runs, and why.
NOT_RUN: dict[str, str] = {
    "make test": "runs the test suite itself",
    "ray start --head --num-cpus 8": "starts a Ray cluster on machines of its own; tests/sim/test_ray.py starts one of two nodes on one machine (ray.cluster_utils.Cluster)",
    "ray start --address HEAD_IP:6379 --num-cpus 8": "joins a Ray cluster from another machine; see the line above",
    "python benchmarks/compare_hivemind.py --hivemind-python PATH --launches 2": "needs hivemind in another interpreter (PATH); without it the script only says it skipped",
    "python benchmarks/compare_hivemind.py --hivemind-python PATH --launches 2 --ring 16": "needs hivemind in another interpreter (PATH); without it the script only says it skipped",
    "python benchmarks/compare_hivemind.py --hivemind-python PATH --launches 2 --load 8": "needs hivemind in another interpreter (PATH); without it the script only says it skipped",
    "python benchmarks/compare_hivemind.py --hivemind-python PATH --launches 2 --ring 16 --load 8": "needs hivemind in another interpreter (PATH); without it the script only says it skipped",
    "python benchmarks/compare_hivemind.py --hivemind-python PATH --launches 3": "needs hivemind in another interpreter (PATH); without it the script only says it skipped",
    "python benchmarks/compare_hivemind.py --hivemind-python PATH --launches 3 --ring 16": "needs hivemind in another interpreter (PATH); without it the script only says it skipped",
    "python benchmarks/compare_flower.py --flower-python PATH --launches 1": "needs Flower in another interpreter (PATH); without it the script only says it skipped",
    "python benchmarks/compare_flower.py --flower-python PATH --launches 3": "needs Flower in another interpreter (PATH); without it the script only says it skipped",
    "python benchmarks/round_sizes.py --hivemind-python PATH --rings 32,16 --plot docs/round_time_vs_size.png": "needs hivemind, and rounds of up to 400 MB; its plot is redrawn from the figures by the --from-json command, which is run",
}  # fmt: skip

#: The benchmarks at small sizes: (the script and arguments, what its JSON line must hold).
SMALL_RUNS = {
    "round_bench memory": (["round_bench.py", "--net", "memory", "--k", "3", "--n", "10000", "--repeats", "1"], "bytes_per_member_over_model"),
    "round_bench memory ring 16": (["round_bench.py", "--net", "memory", "--k", "3", "--n", "10000", "--repeats", "1", "--ring", "16"], '"ring": 16'),
    "round_bench libp2p": (["round_bench.py", "--net", "libp2p", "--n", "10000", "--rounds", "1"], "secure_round_s"),
    "scale_bench": (["scale_bench.py", "--peers", "12", "--rounds", "2"], "rounds_aborted"),
    "crypto_bench": (["crypto_bench.py", "--elements", "100000", "--shards", "2", "--repeats", "1"], "mask"),
    "idle_bench": (["idle_bench.py", "--peers", "3", "--idle-s", "2"], "idle_rss_mb_max"),
    "learning_bench": (["learning_bench.py", "--dataset", "digits", "--peers", "4", "--rounds", "2"], "accuracy"),
    "learning_bench rings": (["learning_bench.py", "--dataset", "digits", "--peers", "4", "--rounds", "2", "--rings", "32,16"], "gossiplearn_memory_ring16"),
    "learning_bench poison": (["learning_bench.py", "--dataset", "digits", "--peers", "4", "--rounds", "2", "--poison", "zero", "--local-reference"], "poison"),
    "insider_bench": (["insider_bench.py", "--seconds", "8", "--classes", "holder,bulk_starvation"], '"bulk_starvation": {"rounds_per_min"'),
}  # fmt: skip

#: Known to fail at this commit: the benchmark, and what is wrong with it (strict: once it is
#: fixed, the xfail fails and asks for this entry to go).
BROKEN: dict[str, str] = {}


# ---- reading the pages ----------------------------------------------------------------------


def fences(text: str) -> Iterator[tuple[str, str, int]]:
    """(language, body, line number) of every fenced code block."""
    for match in re.finditer(r"^```(\S*)\n(.*?)^```[ \t]*$", text, flags=re.MULTILINE | re.DOTALL):
        yield match[1], match[2], text.count("\n", 0, match.start()) + 1


def quick_start_span(text: str) -> tuple[int, int]:
    start = text.index("\n## Quick start")
    end = text.find("\n## ", start + 1)
    return start, end


def shown_commands() -> dict[str, str]:
    """Every command shown (normalized) -> where (page:line), the README's quick start aside."""
    found: dict[str, str] = {}
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        skip = quick_start_span(text) if page.name == "README.md" else (0, 0)
        for language, body, line in fences(text):
            offset = text.index(body)
            if language != "sh" or skip[0] <= offset < skip[1]:
                continue
            for command in body.replace("\\\n", " ").splitlines():
                words = shlex.split(command, comments=True)
                if words:
                    found.setdefault(" ".join(words), f"{page.name}:{line}")
        for span in re.findall(
            r"`((?:PYTHONPATH=\S+ )?python (?:benchmarks|examples)/[^`]+)`", text
        ):
            found.setdefault(" ".join(shlex.split(span)), f"{page.name} (inline)")
    return found


def test_every_code_block_says_what_it_is() -> None:
    wrong = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert text.count("```") % 2 == 0, f"{page.name}: an unclosed code block"
        for language, _, line in fences(text):
            if language not in LANGUAGES:
                wrong.append(f"{page.name}:{line} ```{language}")
    assert not wrong, f"code blocks need one of {sorted(LANGUAGES)}: {wrong}"


def _test_exists(name: str) -> bool:
    path, _, test = name.partition("::")
    file = ROOT / path
    return file.exists() and (not test or re.search(rf"def {test}\(", file.read_text()) is not None)


def test_every_command_shown_is_run_by_a_test() -> None:
    shown = shown_commands()
    unknown = {c: where for c, where in shown.items() if c not in RUN_BY and c not in NOT_RUN}
    assert not unknown, (
        f"commands shown in the docs that no test is named for (add them to RUN_BY in {HERE}, "
        f"with the test that runs them): {unknown}"
    )
    stale = [c for c in (*RUN_BY, *NOT_RUN) if c not in shown]
    assert not stale, f"RUN_BY/NOT_RUN name commands the docs no longer show: {stale}"
    missing = sorted({t for t in RUN_BY.values() if not _test_exists(t)})
    assert not missing, f"tests named in RUN_BY that do not exist: {missing}"
    assert _test_exists(
        "tests/test_readme.py::test_the_quick_start_runs_as_written_until_a_round_completes"
    )


# ---- the commands parse -------------------------------------------------------------------


def _cli_command(words: list[str]) -> tuple[Any, Any, list[str]]:
    """The command ``gossiplearn WORDS`` names (typer's click objects), its context and its own
    arguments."""
    from typer.main import get_command

    from gossiplearn.cli import app

    command = get_command(app)
    context = command.context_class(command, info_name="gossiplearn")
    args = list(words)
    while hasattr(command, "get_command"):  # a group: the next word is its subcommand
        assert args, "a subcommand is missing"
        name, *args = args
        sub = command.get_command(context, name)
        assert sub is not None, f"gossiplearn has no command {name!r}"
        command = sub
        context = command.context_class(command, info_name=name, parent=context)
    return command, context, args


def check_gossiplearn(words: list[str], *, complete: bool) -> None:
    """Its options exist; ``complete``: the whole line parses (values convert, arguments
    given)."""
    command, context, args = _cli_command(words)
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    unknown = [a.split("=")[0] for a in args if a.startswith("--") and a.split("=")[0] not in known]
    assert not unknown, f"gossiplearn {context.info_name} has no option {unknown}"
    if complete:
        command.make_context(context.info_name, args, parent=context.parent)


def check_script(words: list[str]) -> None:
    script = ROOT / words[0]
    assert script.exists(), f"{words[0]} does not exist"
    source = script.read_text()
    for word in words[1:]:
        if word.startswith("--"):
            assert f'"{word}"' in source, f"{words[0]} has no option {word}"


def _program(words: list[str]) -> list[str]:
    """The words after leading VAR=value assignments."""
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words = words[1:]
    return words


@pytest.mark.parametrize("command", sorted(shown_commands()))
def test_a_command_shown_parses(command: str) -> None:
    words = _program(shlex.split(command))
    if words[0] == "gossiplearn":
        check_gossiplearn(words[1:], complete=True)
    elif words[0] == "python" and words[1] == "-m":
        assert words[2] == "pytest" and (ROOT / words[3]).exists()
    elif words[0] == "python":
        check_script(words[1:])
    elif words[0] == "ray":
        assert words[1] == "start" and ("--head" in words or "--address" in words)
    elif words[0] == "make":
        assert re.search(rf"^{words[1]}:", (ROOT / "Makefile").read_text(), re.MULTILINE)
    else:
        pytest.fail(f"{command!r}: not a command these docs know how to check")


def test_inline_gossiplearn_commands_name_real_options() -> None:
    """`gossiplearn CMD --option ...` written in prose: the command and its options exist."""
    checked = 0
    for page in PAGES:
        for span in re.findall(r"`gossiplearn ([a-z][^`]*)`", page.read_text(encoding="utf-8")):
            words = [w for w in shlex.split(span.replace("[", " ").replace("]", " ")) if w != "..."]
            check_gossiplearn(words, complete=False)
            checked += 1
    assert checked > 20


def test_the_quick_start_commands_parse() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = quick_start_span(text)
    lines = [
        line
        for language, body, _ in fences(text[start:end])
        if language == "sh"
        for line in body.splitlines()
    ]
    for line in lines:
        for part in re.split(r"[;&|]+", line.split("#")[0]):
            words = part.split()
            if words[:1] == ["gossiplearn"] and "$(" not in part and "until" not in part:
                check_gossiplearn(words[1:], complete=True)


def test_toml_blocks_are_valid_config() -> None:
    from gossiplearn.peer.config import parse_config

    blocks = [
        (page.name, body)
        for page in PAGES
        for language, body, _ in fences(page.read_text(encoding="utf-8"))
        if language == "toml"
    ]
    assert blocks
    for name, body in blocks:
        parse_config(body, f"the toml block of {name}")


def test_python_blocks_compile_and_use_real_names() -> None:
    import gossiplearn

    blocks = [
        body
        for page in PAGES
        for language, body, _ in fences(page.read_text(encoding="utf-8"))
        if language == "python"
    ]
    assert blocks
    for body in blocks:
        tree = ast.parse(body)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "gossiplearn"
            ):
                assert node.attr in gossiplearn.__all__, node.attr
        if "peer.sync(" in body:
            from gossiplearn.api import Peer

            assert callable(Peer.sync)


# ---- the pages agree with each other and with the code ------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_\[\]()]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_links_between_pages_resolve() -> None:
    broken = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"^[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
                continue
            if anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", file.read_text(encoding="utf-8"), re.MULTILINE)
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_metrics_listed_are_the_metrics_served() -> None:
    source = (ROOT / "gossiplearn" / "peer" / "status.py").read_text()
    kinds = re.findall(r'(Counter|Gauge|Histogram)\(\s*"(gossiplearn_\w+)"', source)
    served = {name + ("_total" if kind == "Counter" else "") for kind, name in kinds}
    assert served
    text = (ROOT / "docs" / "operating.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`(gossiplearn_\w+)", text[text.index("## Metrics") :]))
    assert listed == served, (
        f"listed, not served: {sorted(listed - served)}; served, not listed: {sorted(served - listed)}"
    )


def test_the_modules_architecture_names_exist() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    tree = next(body for language, body, _ in fences(text) if language == "text")
    files = {p.name for p in (ROOT / "gossiplearn").rglob("*.py")}
    named = set(re.findall(r"\b(\w+\.py)\b", tree))
    assert named and named <= files, sorted(named - files)


def test_results_json_is_documented_as_its_module_says() -> None:
    from gossiplearn.sim import report

    rows = [line for line in (report.__doc__ or "").splitlines() if line.startswith("| `")]
    page = (ROOT / "docs" / "simulation.md").read_text(encoding="utf-8")
    assert rows and all(row in page for row in rows), [r for r in rows if r not in page]


# ---- the commands only this file runs -----------------------------------------------------


def _run(
    args: list[str], cwd: Path, timeout: float, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    environment.pop("PYTHONPATH", None)
    environment.update(env)
    return subprocess.run(
        args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )


def block_with(page: str, first: str) -> list[str]:
    """The commands of the ``sh`` block of docs/PAGE whose first command starts with ``first``."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    for language, body, _ in fences(text):
        lines = [line for line in body.replace("\\\n", " ").splitlines() if line.strip()]
        if language == "sh" and lines and lines[0].startswith(first):
            return lines
    raise AssertionError(f"no sh block of docs/{page} starts with {first!r}")


@pytest.mark.timeout(120)
def test_init_with_a_users_model_runs_as_written(tmp_path: Path) -> None:
    (command,) = [
        line
        for line in block_with("api.md", "PYTHONPATH=examples gossiplearn init")
        if line.startswith("PYTHONPATH=examples gossiplearn init ./org-a")
    ]
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # as from the repository's root
    done = _run(["bash", "-e", "-c", command], tmp_path, 100)
    assert done.returncode == 0, done.stderr
    # What docs/api.md shows it printing.
    assert "checked:  backbone 4800 values, 436 training samples" in done.stdout
    assert 'factory = "digits_cnn:model"' in (tmp_path / "org-a" / "config.toml").read_text()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_audit_block_runs_as_written(tmp_path: Path) -> None:
    from tests.commands.test_audit import _peer_with_checkpoint

    (tmp_path / "org").mkdir()
    _peer_with_checkpoint(tmp_path / "org").rename(tmp_path / "org-a")
    commands = block_with("privacy.md", "gossiplearn audit ./org-a")
    assert len(commands) == 3
    for command in commands:
        done = _run(["bash", "-e", "-c", command], tmp_path, 200)
        assert done.returncode == 0, (command, done.stderr[-2000:])
        assert "exposure" in done.stdout
    assert (tmp_path / "org-a" / "audit" / "roc.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.timeout(120)
def test_the_size_plot_is_redrawn_from_its_figures_as_written(tmp_path: Path) -> None:
    command = next(
        line
        for line in block_with("performance.md", "python benchmarks/round_sizes.py")
        if "--from-json" in line
    )
    # The repository's layout, with a copy of docs/ so the plot it writes is not the real one.
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "round_time_vs_size.jsonl", tmp_path / "docs")
    done = _run(["bash", "-e", "-c", command], tmp_path, 100)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "docs" / "round_time_vs_size.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(reason=BROKEN[n], strict=True))
        if n in BROKEN
        else n
        for n in SMALL_RUNS
    ],
)
def test_a_documented_benchmark_runs_at_a_small_size(name: str, tmp_path: Path) -> None:
    import json

    args, key = SMALL_RUNS[name]
    done = _run([sys.executable, str(ROOT / "benchmarks" / args[0]), *args[1:]], tmp_path, 280)
    assert done.returncode == 0, done.stderr[-3000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert key in json.dumps(line), line
