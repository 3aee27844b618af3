"""Data adapters: the daemon loads its private data through a ``module:function`` loader.

The config names a loader such as ``"gossiplearn.sim.datasets:digits"`` plus keyword options;
the loader returns ``(train, validation)`` or ``(train, validation, test)`` map-style datasets
of ``(input, label)`` samples. The peer trains on ``train``; ``validation`` decides whether a
group average helps it (personal acceptance); ``test``, if given, is what its reported
accuracy is measured on (else ``validation`` is). This keeps the daemon free of any dataset
code: an organization plugs in its own loader.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # no torch at import: config and init read this module too
    from torch.utils.data import Dataset

_SPEC_FORM = "'package.module:function'"


#: The built-in datasets' default fraction of a peer's shard held out of training to decide
#: whether a group average helps it (its validation set); the test set (the loaders'
#: ``holdout``, 25%) is what its accuracy is reported on.
DEFAULT_VALIDATION = 0.1


@dataclass(frozen=True)
class PeerData:
    """One peer's data: what it trains on, decides on, and is measured on."""

    train: Dataset
    validation: Dataset  # whether a group average helps (personal acceptance)
    test: Dataset  # the reported accuracy; the validation set itself if there is no other

    @property
    def separate_test(self) -> bool:
        return self.test is not self.validation

    def as_tuple(self) -> tuple[Dataset, ...]:
        """As a loader returns it: (train, validation) or (train, validation, test)."""
        if self.separate_test:
            return self.train, self.validation, self.test
        return self.train, self.validation


def peer_data(result: tuple[Dataset, ...]) -> PeerData:
    """``(train, validation)`` or ``(train, validation, test)`` as :class:`PeerData`."""
    if len(result) == 2:
        return PeerData(result[0], result[1], result[1])
    train, validation, test = result
    return PeerData(train, validation, test)


class DataLoaderError(ValueError):
    """A loader spec cannot be resolved, or the loader broke its contract."""


class ModelFactoryError(DataLoaderError):
    """``model.factory`` cannot be resolved, or calling it with ``model.options`` failed."""


class TrainerError(DataLoaderError):
    """``training.trainer`` cannot be resolved, built, or does not act as a trainer."""


#: gossiplearn's own modules under the names earlier versions had, as config files written
#: then name them: old module -> where the same callables live now. Such a spec resolves as
#: before (errors still quote it as written). ``gossiplearn init`` wrote the first one as the
#: default ``model.factory`` ("gossiplearn.peer.models:mlp") until peer/ was split into rooms.
LEGACY_MODULES = {
    "gossiplearn.peer.models": "gossiplearn.peer.learning.architectures",
}


def spec_problem(spec: str, what: str) -> str | None:
    """Why ``spec`` cannot name a callable (``"package.module:function"``), without importing
    anything; None if it can. The message starts with ``what`` (say, "--model")."""
    module_name, separator, attribute_path = spec.partition(":")
    if (
        not separator
        or ":" in attribute_path
        or not all(part.isidentifier() for part in module_name.split("."))
        or not all(part.isidentifier() for part in attribute_path.split("."))
    ):
        return f"{what} {spec!r} is not of the form {_SPEC_FORM}"
    return None


def resolve(
    spec: str, what: str = "data loader", error: type[DataLoaderError] = DataLoaderError
) -> Callable[..., Any]:
    """The callable named by ``"package.module:function"`` (the function may be dotted; a
    module named as in :data:`LEGACY_MODULES` is looked up where it lives now); errors are
    ``error``s whose message starts with ``what`` (say, "model.factory")."""
    problem = spec_problem(spec, what)
    if problem:
        raise error(problem)
    module_name, _, attribute_path = spec.partition(":")
    module_name = LEGACY_MODULES.get(module_name, module_name)
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only "the named module does not exist" is a spec error; a missing import *inside*
        # the loader's module is reported as such, so the real culprit is named.
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise error(
                f"{what} module {module_name!r} not found: install the package that has it, "
                "or add its directory to PYTHONPATH"
            ) from exc
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


def load_datasets(spec: str, options: Mapping[str, object]) -> PeerData:
    """Call the loader named by ``spec`` with ``options`` and check what it returns."""
    loader = resolve(spec, "data.loader")
    try:
        result = loader(**options)
    except Exception as exc:
        raise DataLoaderError(f"data.loader {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise DataLoaderError(
            f"data.loader {spec!r} must return a (train, validation) or (train, validation, "
            f"test) tuple, got {type(result).__name__}"
            + (f" of {len(result)}" if isinstance(result, tuple) else "")
        )
    for role, dataset in zip(("training", "validation", "test"), result, strict=False):
        _check_dataset(spec, role, dataset)
    return peer_data(result)
