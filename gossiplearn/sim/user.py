"""Your model, data and trainer in ``gossiplearn sim`` (``--model``, ``--data``, ``--trainer``).

- ``--model module:function``: called with the ``--model-option``s as keywords, returns a fresh ``torch.nn.Module``
  with ``backbone`` and ``head`` submodules (or parameters named that way). Every method starts
  from the same initial weights: it is called under the run's seed.
- ``--data module:function``: called as ``function(peer, peers, **options)`` for peer
  ``0..peers-1`` (``options``: the ``--data-option KEY=VALUE``s), returns that peer's
  ``(train, test)`` or ``(train, validation, test)`` map-style datasets.
  With two, ``--validation`` of the training part (seeded) becomes the validation set that
  gossiplearn peers decide on; every method trains on the same training part.
- ``--trainer module:Class``: a :class:`~gossiplearn.peer.learning.trainer.TrainerProtocol`, built as
  ``Class(model, data, config, **options)`` (the ``--trainer-option``s, and ``peer`` and
  ``peers`` if the constructor has parameters of those names); gossiplearn and every baseline
  train through it. Its
  ``evaluate()`` must return ``"accuracy"`` (higher is better): the table and plots report it.

In process and inproc modes the peers are real daemons; their ``config.toml`` names these
same functions (``data.loader`` is :func:`load_shard` with the function in ``data.options``),
so the module must be importable by them too: from the current directory (where
``gossiplearn sim`` runs), ``PYTHONPATH`` or an installed package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gossiplearn.peer.learning.data import DataLoaderError, ModelFactoryError, PeerData, resolve

if TYPE_CHECKING:
    from torch.utils.data import Dataset


def load_shard(
    function: str,
    peer: int,
    peers: int,
    validation: float = 0.1,
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> tuple[Dataset, ...]:
    """Peer ``peer``'s (train, validation, test) from the user's
    ``function(peer, peers, **options)``: the loader a simulated daemon's ``data.loader``
    names."""
    result = _call_data(function, peer, peers, options or {})
    if len(result) == 3:
        return result
    train, test = result
    return (*_hold_out(function, train, validation, seed, peer), test)


def load_all(
    function: str,
    peers: int,
    validation: float,
    seed: int,
    options: dict[str, Any] | None = None,
) -> list[PeerData]:
    return [
        PeerData(*load_shard(function, peer, peers, validation, seed, options))
        for peer in range(peers)
    ]


def held_out(data: PeerData) -> bool:
    """Whether this peer's validation set was held out of its training set here (the data
    function returned (train, test)), so that ``--validation`` applied."""
    from torch.utils.data import Subset

    train, validation = data.train, data.validation
    return (
        isinstance(train, Subset)
        and isinstance(validation, Subset)
        and train.dataset is validation.dataset
    )


def model_factory(spec: str) -> Any:
    """The ``--model`` function, checked to be there (one-line ModelFactoryError if not)."""
    return resolve(spec, "--model", ModelFactoryError)


def _call_data(function: str, peer: int, peers: int, options: dict[str, Any]) -> tuple[Any, ...]:
    loader = resolve(function, "--data")
    try:
        result = loader(peer, peers, **options)
    except Exception as exc:
        given = f" with --data-option {options}" if options else ""
        raise DataLoaderError(
            f"--data {function!r} failed for peer {peer} of {peers}{given}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
        raise DataLoaderError(
            f"--data {function!r} must return (train, test) or (train, validation, test) "
            f"for peer {peer} of {peers}, got {got}"
        )
    for role, dataset in zip(("training", "validation/test", "test"), result, strict=False):
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise DataLoaderError(
                f"--data {function!r}: the {role} set of peer {peer} ({type(dataset).__name__}) "
                "is not a map-style dataset (needs __len__ and __getitem__)"
            )
        if len(dataset) == 0:
            raise DataLoaderError(f"--data {function!r}: the {role} set of peer {peer} is empty")
    return result


def _hold_out(
    function: str, train: Dataset, fraction: float, seed: int, peer: int
) -> tuple[Dataset, Dataset]:
    """(train, validation): ``fraction`` of ``train`` (at least one sample, leaving one),
    chosen by (seed, peer)."""
    import numpy as np
    from torch.utils.data import Subset

    size = len(train)  # type: ignore[arg-type]
    if size < 2:
        raise DataLoaderError(
            f"--data {function!r}: peer {peer}'s training set has {size} sample(s); holding "
            "out a validation set needs 2 or more (or return (train, validation, test))"
        )
    held = min(max(round(fraction * size), 1), size - 1)
    order = np.random.default_rng([seed, peer, 0x7A11]).permutation(size)
    return Subset(train, order[held:].tolist()), Subset(train, order[:held].tolist())
