"""Build a model without paying for the random initialisation that loaded weights overwrite.

:func:`build_on_meta` runs the model's constructor on the meta device (no memory; every init call is a
no-op) while :class:`_InitRecorder` notes, per tensor storage, how each tensor was created and which in-place
calls (``uniform_``, ``trunc_normal_``, ``zero_``, ``mul_``...) the constructor applied to it.
:func:`materialize` then allocates real tensors, copies the loaded weights in, recomputes non-persistent
buffers with the modules' own ``init_non_persistent_buffers`` (timm's contract for meta-device builds) and
initialises the keys the load leaves fresh (a new classifier) by replaying exactly the constructor's calls
on them. So a fresh head gets the architecture's own init (same functions, same distribution), though not
the same random draws as a full build, which consumes the random stream for every layer first.

Anything the recipe cannot reproduce safely (a tensor attribute outside parameters and buffers, a
non-persistent buffer without ``init_non_persistent_buffers``, a fresh tensor derived from another tensor or
partly written) makes these functions return ``None``; the caller then builds the model the ordinary way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

_FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.tensor}
_SKIP = {torch.Tensor.requires_grad_}
# In-place calls that change values only: on meta they are no-ops (but slow), so they are recorded, not run.
_VALUE_WRITES = {"uniform_", "normal_", "zero_", "fill_", "mul_", "add_", "sub_", "div_", "clamp_", "erfinv_"}
_VALUE_WRITES |= {"copy_", "exp_", "log_", "sqrt_", "neg_", "abs_", "pow_", "bernoulli_", "random_"}


def _key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def _geometry(tensor: torch.Tensor) -> tuple:
    return tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset(), tensor.dtype


def _has_tensor(values: Any) -> bool:
    items = values.values() if isinstance(values, dict) else values
    return any(
        isinstance(v, torch.Tensor) or (isinstance(v, (list, tuple, dict)) and _has_tensor(v)) for v in items
    )


@dataclass
class _Call:
    target: torch.Tensor  # held so that its storage (the key) stays alive and unique
    func: Callable
    args: tuple
    kwargs: dict


class _InitRecorder(TorchFunctionMode):
    """Notes the creating call and the in-place calls of every meta tensor made while active."""

    def __init__(self) -> None:
        super().__init__()
        self.made: dict[int, _Call] = {}
        self.writes: dict[int, list[_Call]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        target = _written(func, args, kwargs)
        if target is not None and target.is_meta:
            self.writes.setdefault(_key(target), []).append(_Call(target, func, args, kwargs))
            if func.__name__ in _VALUE_WRITES or getattr(func, "__module__", "") == "torch.nn.init":
                return target  # a no-op on meta: skip it
        out = func(*args, **kwargs)
        if func in _FACTORIES and isinstance(out, torch.Tensor) and out.is_meta:
            self.made[_key(out)] = _Call(out, func, args, kwargs)
        return out

    def replay(self, like: torch.Tensor) -> torch.Tensor | None:
        """A CPU tensor made and initialised the way the constructor made ``like``; ``None`` if unsure."""
        made = self.made.get(_key(like))
        if made is None or _geometry(made.target) != _geometry(like) or _has_tensor([made.args, made.kwargs]):
            return None
        tensor = made.func(*made.args, **{**made.kwargs, "device": "cpu"})
        with torch.no_grad():
            for call in self.writes.get(_key(like), []):
                if call.func in _SKIP:
                    continue
                args = tuple(tensor if a is call.target else a for a in call.args)
                kwargs = {k: tensor if v is call.target else v for k, v in call.kwargs.items()}
                partial = _geometry(call.target) != _geometry(like) or call.func.__name__ == "__setitem__"
                if partial or "out" in kwargs or _has_tensor([a for a in args if a is not tensor]):
                    return None
                if _has_tensor([v for v in kwargs.values() if v is not tensor]):
                    return None
                call.func(*args, **kwargs)
        return tensor if _geometry(tensor)[0::3] == _geometry(like)[0::3] else None


def _written(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The tensor an in-place call (``x.normal_()``, ``init.zeros_(x)``, ``out=x``, ``x[i] = v``) writes."""
    name = getattr(func, "__name__", "")
    if "out" in kwargs:
        target = kwargs["out"]
    elif name == "__setitem__" or (name.endswith("_") and not name.startswith("_")):
        target = args[0] if args else kwargs.get("tensor", kwargs.get("input", kwargs.get("self")))
    else:
        return None
    return target if isinstance(target, torch.Tensor) else None


@dataclass
class MetaModel:
    """A model built on the meta device, with the record of how its constructor initialised it."""

    model: torch.nn.Module
    recorder: _InitRecorder


def build_on_meta(create: Callable[[], torch.nn.Module]) -> MetaModel | None:
    """Run ``create()`` on the meta device; ``None`` when the result cannot be materialised safely."""
    recorder = _InitRecorder()
    try:
        with torch.device("meta"), recorder:
            model = create()
    except Exception as exc:  # noqa: BLE001 - e.g. a constructor reading tensor values; the ordinary build decides
        logger.debug("fast init not used: building on the meta device failed (%s)", exc)
        return None
    problem = _unsupported(model)
    if problem:
        logger.debug("fast init not used for %s: %s", type(model).__name__, problem)
        return None
    return MetaModel(model, recorder)


def _unsupported(model: torch.nn.Module) -> str:
    for name, module in model.named_modules():
        skip = {"_parameters", "_buffers", "_modules"}
        attrs = {k: v for k, v in vars(module).items() if k not in skip}
        if _has_tensor(attrs):
            return f"tensor attribute outside parameters and buffers in '{name}'"
        own = [b for b in module._non_persistent_buffers_set if module._buffers.get(b) is not None]
        if own and not callable(getattr(module, "init_non_persistent_buffers", None)):
            return f"non-persistent buffers {own} of '{name}' have no init_non_persistent_buffers"
    return ""


def materialize(meta: MetaModel, state: dict[str, torch.Tensor], fresh: list[str]) -> torch.nn.Module | None:
    """Allocate ``meta.model`` on the CPU, load ``state`` and initialise the ``fresh`` keys.

    Args:
        meta: from :func:`build_on_meta`.
        state: every state-dict key except ``fresh``, already checked against the model.
        fresh: keys to initialise as the constructor would.

    Returns:
        The model, or ``None`` when a fresh key cannot be initialised that way (nothing was changed).
    """
    own = meta.model.state_dict()
    made = {key: meta.recorder.replay(own[key]) for key in fresh}
    if any(tensor is None for tensor in made.values()):
        logger.debug(
            "fast init not used: cannot replay the init of %s", [k for k, v in made.items() if v is None]
        )
        return None
    model = meta.model.to_empty(device="cpu")
    for module in model.modules():
        if module._non_persistent_buffers_set and hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
    model.load_state_dict({**state, **made}, strict=True)
    return model
