"""Keep torch's compiler stack out of a daemon that never compiles.

torch 2.x imports ``torch._dynamo`` the first time an optimizer is used: ``Optimizer``'s
``add_param_group``, ``zero_grad``, ``state_dict`` and ``load_state_dict`` are wrapped by
``torch._disable_dynamo``, which imports it on the first call, and every ``step`` is wrapped
by ``_use_grad_for_differentiable``, which imports it on every call to insert graph breaks.
That import pulls in sympy, torch.distributed, torch.onnx, torch._inductor and pydantic:
~900 modules, ~100 MB of resident memory and seconds of CPU at start-up, for code paths
that matter only under ``torch.compile``, which gossiplearn never uses.

:func:`avoid_dynamo_import` (called once at daemon start-up) makes those wrappers call the
wrapped function directly, as they do in eager mode anyway: ``_disable_dynamo`` caches the
function to call on the wrapped function itself (``__dynamo_disable``), so it is pre-set to
the function; a ``step`` wrapper is replaced by one that sets grad mode like the original
and skips only the graph breaks (no-ops outside compilation). Numerics are unchanged
(a test checks). If torch's internals change shape, nothing is patched and the only cost
is the import. Once ``torch._dynamo`` is imported (someone compiles), nothing is done.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any

log = logging.getLogger("gossiplearn.lean")

_DISABLE_ATTR = "__dynamo_disable"
_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def _wrapper_code(method: Any, name: str, file_suffix: str) -> bool:
    """Whether ``method`` is the closure ``name`` defined in torch's ``file_suffix`` (wrappers
    copy the wrapped function's names, not its code)."""
    code = getattr(method, "__code__", None)
    return (
        code is not None
        and code.co_name == name
        and code.co_filename.replace("\\", "/").endswith(file_suffix)
    )


def _is_dynamo_wrapper(method: Any) -> bool:
    return _wrapper_code(method, "inner", "torch/_compile.py")


def avoid_dynamo_import() -> int:
    """Patch torch.optim so using an optimizer does not import torch._dynamo; returns how many
    methods were patched (0 if torch._dynamo is already imported or torch changed)."""
    if "torch._dynamo" in sys.modules:
        return 0
    import torch.optim

    patched = 0
    base = torch.optim.Optimizer
    for name in _METHODS:
        method = base.__dict__.get(name)
        wrapped = getattr(method, "__wrapped__", None)
        if (
            wrapped is not None
            and _is_dynamo_wrapper(method)
            and getattr(wrapped, _DISABLE_ATTR, None) is None
        ):
            setattr(wrapped, _DISABLE_ATTR, wrapped)
            patched += 1
    for cls in _optimizer_classes(torch.optim):
        step = cls.__dict__.get("step")
        original = getattr(step, "__wrapped__", None)
        if original is None or not _wrapper_code(step, "_use_grad", "torch/optim/optimizer.py"):
            continue
        setattr(cls, "step", _eager_step(original))  # noqa: B010 - any optimizer class
        patched += 1
    log.debug("torch.optim: %d methods no longer import torch._dynamo", patched)
    return patched


def _optimizer_classes(module: Any) -> list[type]:
    classes = []
    for name in dir(module):
        value = getattr(module, name)
        if isinstance(value, type) and issubclass(value, module.Optimizer):
            classes.append(value)
    return classes


def _eager_step(original: Any) -> Any:
    """``_use_grad_for_differentiable`` without its graph breaks (no-ops in eager mode)."""
    import torch

    @functools.wraps(original)
    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        previous = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults["differentiable"])
            return original(self, *args, **kwargs)
        finally:
            torch.set_grad_enabled(previous)

    step.__gossiplearn_eager__ = True  # type: ignore[attr-defined]
    return step
