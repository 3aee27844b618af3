"""Data adapters: the daemon loads its private data through a ``module:function`` loader.

The config names a loader such as ``"gossiplearn.sim.datasets:digits"`` plus keyword options;
the loader returns ``(train, validation)`` map-style datasets of ``(input, label)`` samples.
This keeps the daemon free of any dataset code: an organization plugs in its own loader.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from torch.utils.data import Dataset

_SPEC_FORM = "'package.module:function'"


class DataLoaderError(ValueError):
    """A loader spec cannot be resolved, or the loader broke its contract."""


class ModelFactoryError(DataLoaderError):
    """``model.factory`` cannot be resolved, or calling it with ``model.options`` failed."""


def resolve(
    spec: str, what: str = "data loader", error: type[DataLoaderError] = DataLoaderError
) -> Callable[..., Any]:
    """The callable named by ``"package.module:function"`` (the function may be dotted);
    errors are ``error``s whose message starts with ``what`` (say, "model.factory")."""
    module_name, separator, attribute_path = spec.partition(":")
    if (
        not separator
        or ":" in attribute_path
        or not all(part.isidentifier() for part in module_name.split("."))
        or not all(part.isidentifier() for part in attribute_path.split("."))
    ):
        raise error(f"{what} {spec!r} is not of the form {_SPEC_FORM}")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only "the named module does not exist" is a spec error; a missing import *inside*
        # the loader's module is reported as such, so the real culprit is named.
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise error(f"{what} module {module_name!r} not found") from exc
        raise error(f"{what}: importing module {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise error(f"{what}: importing module {module_name!r} failed: {exc}") from exc
    for attribute in attribute_path.split("."):
        if not hasattr(target, attribute):
            raise error(f"{what} {spec!r}: {attribute!r} not found")
        target = getattr(target, attribute)
    if not callable(target):
        raise error(f"{what} {spec!r} is not callable")
    return target


def _check_dataset(spec: str, role: str, dataset: object) -> None:
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise DataLoaderError(
            f"data.loader {spec!r}: the {role} set ({type(dataset).__name__}) is not a map-style "
            "dataset (needs __len__ and __getitem__)"
        )
    if len(dataset) == 0:
        raise DataLoaderError(f"data.loader {spec!r}: the {role} set is empty")


def load_datasets(spec: str, options: Mapping[str, object]) -> tuple[Dataset, Dataset]:
    """Call the loader named by ``spec`` with ``options`` and check what it returns."""
    loader = resolve(spec, "data.loader")
    try:
        result = loader(**options)
    except Exception as exc:
        raise DataLoaderError(f"data.loader {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, tuple) or len(result) != 2:
        raise DataLoaderError(
            f"data.loader {spec!r} must return a (train, validation) tuple, "
            f"got {type(result).__name__}"
        )
    train, validation = result
    _check_dataset(spec, "training", train)
    _check_dataset(spec, "validation", validation)
    return train, validation
