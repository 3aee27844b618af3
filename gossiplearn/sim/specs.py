"""The built-in datasets' names and their partition specs, checked without loading anything
(standard library only): ``gossiplearn init`` and ``gossiplearn sim`` refuse a typo here,
before a peer directory is written or a progress bar drawn, and datasets.py splits by the
same parse."""

from __future__ import annotations

import math
import re

#: The names of gossiplearn.sim.datasets.DATASETS (a test keeps them equal).
DATASET_NAMES = ("digits", "fashion-mnist", "synthetic")

POOLED_FORMS = "'iid', 'dirichlet:ALPHA' with ALPHA > 0 or 'shards:C' with C >= 1"
SYNTHETIC_FORM = "'synthetic:ALPHA,BETA' with ALPHA, BETA >= 0"
_SYNTHETIC_SPEC = re.compile(r"synthetic:([^,]+),([^,]+)")


def one_of(names: tuple[str, ...] | list[str]) -> str:
    """("a", "b", "c") -> "a, b or c"."""
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def parse_partition(spec: str) -> tuple[str, float]:
    """``"iid"`` -> ("iid", 0), ``"dirichlet:ALPHA"`` -> ("dirichlet", ALPHA > 0),
    ``"shards:C"`` -> ("shards", C >= 1); ValueError naming the forms otherwise."""
    if spec == "iid":
        return "iid", 0.0
    kind, _, argument = spec.partition(":")
    if kind == "dirichlet":
        try:
            alpha = float(argument)
        except ValueError:
            alpha = math.nan
        if alpha > 0 and math.isfinite(alpha):
            return "dirichlet", alpha
    if kind == "shards" and argument.isascii() and argument.isdigit() and int(argument) >= 1:
        return "shards", float(int(argument))
    raise ValueError(f"partition {spec!r} is not {POOLED_FORMS}")


def parse_synthetic(spec: str) -> tuple[float, float]:
    """``"synthetic:ALPHA,BETA"`` -> (ALPHA, BETA); ValueError otherwise."""
    match = _SYNTHETIC_SPEC.fullmatch(spec)
    try:
        if match is None:
            raise ValueError
        parsed = float(match[1]), float(match[2])
    except ValueError:
        parsed = (math.nan, math.nan)
    if not all(value >= 0 and math.isfinite(value) for value in parsed):
        raise ValueError(f"partition {spec!r} is not {SYNTHETIC_FORM}")
    return parsed


def check_partition(spec: str, dataset: str) -> None:
    """ValueError (its message starting "partition 'SPEC' is not ...") unless ``spec`` splits
    the built-in ``dataset``. Synthetic data takes 'synthetic:ALPHA,BETA'; a pooled dataset's
    spec is accepted there too (it means Synthetic(1, 1)), anything else is not."""
    if dataset == "synthetic":
        if spec.startswith("synthetic:"):
            parse_synthetic(spec)
            return
        try:
            parse_partition(spec)
        except ValueError:
            raise ValueError(
                f"partition {spec!r} is not {SYNTHETIC_FORM} (or one of {POOLED_FORMS}, "
                "meaning Synthetic(1, 1))"
            ) from None
        return
    parse_partition(spec)
