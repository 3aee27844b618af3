"""Dependencies point one way, and the pure layers stay pure.

Every module of the package is parsed (``ast``: imports inside functions, the lazy ones, and
under ``TYPE_CHECKING`` count too) and each import of a gossiplearn module is checked against
the layer table below: a module may import its own layer and the layers below it, never one
above. A new module needs a row in MODULE_LAYERS (the test says so).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gossiplearn"

#: The layers, each with the layers directly below it; a module may import its own layer and
#: every layer below, transitively. Arrows point down:
#:
#:     base (fileio, version)  <-  crypto  <-  protocol  <-  peer  <-  privacy.audit  <-  sim
#:     privacy.dp (a leaf: torch and Opacus, imported lazily)  <-  peer
#:     peer  <-  api  <-  root (the package's public names, ``import gossiplearn``)
#:     sim, api  <-  commands  <-  cli  <-  __main__
#:
#: ``testing`` (fixtures and adversaries for tests and benchmarks) may import every layer, and
#: no layer may import it.
LAYERS: dict[str, tuple[str, ...]] = {
    "base": (),
    "privacy.dp": (),
    "crypto": ("base",),
    "protocol": ("crypto",),
    "peer": ("protocol", "privacy.dp"),
    "privacy.audit": ("peer",),
    "sim": ("privacy.audit",),
    "api": ("peer",),
    "root": ("api",),
    "commands": ("sim", "api"),
    "cli": ("commands",),
    "main": ("cli",),
}
LAYERS["testing"] = tuple(LAYERS)

#: The layer of each module: the row of the longest prefix that matches ("gossiplearn.peer"
#: holds every module under peer/); the package root "gossiplearn" matches itself only.
MODULE_LAYERS = {
    "gossiplearn": "root",
    "gossiplearn.__main__": "main",
    "gossiplearn.version": "base",
    "gossiplearn.fileio": "base",
    "gossiplearn.crypto": "crypto",
    "gossiplearn.protocol": "protocol",
    "gossiplearn.privacy": "privacy.dp",  # the package itself: dp's names, nothing else
    "gossiplearn.privacy.dp": "privacy.dp",
    "gossiplearn.privacy.exposure": "privacy.audit",
    "gossiplearn.privacy.audit": "privacy.audit",
    "gossiplearn.peer": "peer",
    "gossiplearn.sim": "sim",
    "gossiplearn.api": "api",
    "gossiplearn.commands": "commands",
    "gossiplearn.cli": "cli",
    "gossiplearn.testing": "testing",
}

#: Inside peer, the two rooms stay apart: (importer, imported, what may cross). The network
#: side runs any learning side (through runtime.Learning) and knows nothing of the built-in
#: one; the learning side is handed a runtime and names it in annotations only; the daemon,
#: which joins them, is above both.
ROOMS = [
    ("gossiplearn.peer.net", "gossiplearn.peer.learning", "nothing"),
    ("gossiplearn.peer.net", "gossiplearn.peer.daemon", "nothing"),
    ("gossiplearn.peer.learning", "gossiplearn.peer.daemon", "nothing"),
    ("gossiplearn.peer.learning", "gossiplearn.peer.net", "annotations"),
]


@dataclass(frozen=True)
class Import:
    module: str  # the gossiplearn module imported
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def layer_of(module: str) -> str | None:
    if module == "gossiplearn":
        return MODULE_LAYERS["gossiplearn"]
    matches = [
        prefix
        for prefix in MODULE_LAYERS
        if prefix != "gossiplearn" and (module == prefix or module.startswith(prefix + "."))
    ]
    return MODULE_LAYERS[max(matches, key=len)] if matches else None


def allowed(layer: str) -> set[str]:
    """``layer`` and every layer below it."""
    below = {layer}
    for lower in LAYERS[layer]:
        below |= allowed(lower)
    return below


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_in(source: str, module: str, is_package: bool = False) -> list[Import]:
    """The gossiplearn modules the source of ``module`` imports, wherever the statement is."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "gossiplearn" or alias.name.startswith("gossiplearn."):
                    found.append(Import(alias.name, node.lineno, type_only))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this module is in
                parts = package.split(".")
                name = ".".join(parts[: len(parts) - node.level + 1] + [node.module or ""])
                name = name.rstrip(".")
            else:
                name = node.module or ""
            if name == "gossiplearn" or name.startswith("gossiplearn."):
                for alias in node.names:
                    # ``from gossiplearn.peer.net import engine``: the submodule, if it is one.
                    submodule = f"{name}.{alias.name}"
                    imported = submodule if submodule in modules() else name
                    found.append(Import(imported, node.lineno, type_only))
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(ast.parse(source), False)
    return found


def imports_of(module: str) -> list[Import]:
    path = modules()[module]
    return imports_in(path.read_text(), module, path.name == "__init__.py")


def layer_violations(module: str, imports: list[Import]) -> list[str]:
    """One line per import of ``module`` that points up the layers."""
    layer = layer_of(module)
    assert layer is not None, f"{module} has no layer in MODULE_LAYERS"
    return [
        f"{module} (layer {layer}) imports {imported.module} (layer {theirs}) at line "
        f"{imported.line}; {layer} may import only {', '.join(sorted(allowed(layer)))}"
        for imported in imports
        if (theirs := layer_of(imported.module)) not in allowed(layer)
    ]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def room_violations(module: str, imports: list[Import]) -> list[str]:
    """One line per import of ``module`` that crosses between the peer's rooms (ROOMS)."""
    return [
        f"{module} imports {imported.module} at line {imported.line}: {importer} may import "
        f"{what} of {target}"
        for imported in imports
        for importer, target, what in ROOMS
        if _within(module, importer)
        and _within(imported.module, target)
        and not (what == "annotations" and imported.type_only)
    ]


def test_every_module_has_a_layer():
    missing = sorted(m for m in modules() if layer_of(m) is None)
    assert not missing, f"add these modules to MODULE_LAYERS in {__file__}: {missing}"


def test_imports_point_down_the_layers():
    wrong = [line for m in modules() for line in layer_violations(m, imports_of(m))]
    assert not wrong, "imports that point up the layers:\n" + "\n".join(wrong)


def test_nothing_in_the_package_imports_testing():
    wrong = [
        f"{module} imports {imported.module} at line {imported.line}"
        for module in modules()
        if layer_of(module) != "testing"
        for imported in imports_of(module)
        if layer_of(imported.module) == "testing"
    ]
    assert not wrong, "gossiplearn.testing is for tests and benchmarks only:\n" + "\n".join(wrong)


def test_the_rooms_of_the_peer_stay_apart():
    wrong = [line for m in modules() for line in room_violations(m, imports_of(m))]
    assert not wrong, "the peer's rooms mixed up:\n" + "\n".join(wrong)


def test_the_checks_catch_back_arrows_wherever_they_hide():
    # What runtime.py once did (the package root, for __version__), inside a function, and a
    # type-only import of the learning side: both are found and named.
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from gossiplearn.peer.learning.builtin import BuiltinLearning\n"
        "def version():\n"
        "    from gossiplearn import __version__\n"
        "    return __version__\n"
    )
    runtime = "gossiplearn.peer.net.runtime"
    imports = imports_in(source, runtime)
    assert [(i.module, i.line, i.type_only) for i in imports] == [
        ("gossiplearn.peer.learning.builtin", 3, True),
        ("gossiplearn", 5, False),
    ]
    [up] = layer_violations(runtime, imports)
    assert up.startswith(f"{runtime} (layer peer) imports gossiplearn (layer root) at line 5")
    [crossed] = room_violations(runtime, imports)
    assert crossed.startswith(f"{runtime} imports gossiplearn.peer.learning.builtin at line 3")
    assert layer_violations("gossiplearn.sim.daemons", imports_in("import gossiplearn.cli", "x"))
    assert not room_violations(
        "gossiplearn.peer.learning.builtin",
        imports_in("if TYPE_CHECKING:\n    import gossiplearn.peer.net.runtime", "x"),
    )


def test_crypto_and_protocol_import_no_io_or_ml_stack():
    code = (
        "import sys, gossiplearn.crypto, gossiplearn.protocol; "
        "heavy = {'trio', 'libp2p', 'torch'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_privacy_package_imports_neither_torch_nor_opacus():
    # The config code reads gossiplearn.privacy; Opacus loads only when privacy is on.
    code = (
        "import sys, gossiplearn.privacy, gossiplearn.peer.config; "
        "heavy = {'torch', 'opacus'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
