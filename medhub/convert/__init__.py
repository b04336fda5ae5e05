"""Original checkpoint formats -> timm state dicts, declaratively, with a report of every change.

Public API (the loader in ``medhub/load.py`` codes against these signatures):

- ``read_checkpoint(path) -> Any``: load a ``.safetensors`` / ``.npz`` / torch file safely
  (``torch.load(weights_only=True)``; only ``argparse.Namespace`` is admitted beyond plain data; anything
  else raises :class:`~medhub.errors.UnsafeCheckpointError` and never runs).
- ``detect_format(obj, path=None) -> (fmt, reason)``: what ``fmt="auto"`` chooses, and why.
- ``convert_state(obj, fmt="auto", *, target=None, path=None) -> (state_dict, ConversionReport)``: convert a
  loaded checkpoint object; ``target`` (key -> shape of the timm model) enables shape-dependent steps
  (Swin relative-position tables resized to the target window, ConvNeXt reshapes, FrozenBN counters).
- ``convert_file(path, *, fmt="auto", arch=None, **arch_kwargs) -> (state_dict, ConversionReport)``: read +
  convert; with ``arch`` the keys are checked against ``timm.create_model(arch, **arch_kwargs)``: only the
  classifier may be absent, nothing may be unexpected (else :class:`~medhub.errors.ConversionError`
  listing the keys).
- ``convert_checkpoint(path, *, fmt="auto", arch, **arch_kwargs) -> dict[str, Tensor]``: the same, weights only.
- ``FORMATS``: name -> one-line description, for every accepted ``fmt`` (``"auto"`` excluded).
- ``ConversionReport``: fmt, detected, reason, container, prefix, renamed, dropped, adapted, metadata, notes;
  ``.summary()`` for people, ``.to_dict()`` for JSON.

Loading the converted weights strictly into a model (classifier re-init, first-conv adaptation) is
``medhub.build.create_model``.

>>> from medhub.convert import convert_file
>>> state, report = convert_file("moco_v2_800ep_pretrain.pth.tar", arch="resnet50")  # doctest: +SKIP
>>> report.fmt, report.prefix
('moco', 'module.encoder_q.')
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from medhub.convert import foreign, official, resnet_family, ssl
from medhub.convert._core import (
    ConversionReport,
    KeyMap,
    Rules,
    Target,
    head_hint,
    listed,
    pool_hint,
    stem_hint,
    stray_hint,
)
from medhub.convert._detect import detect_format, detect_path_format
from medhub.convert._read import read_checkpoint
from medhub.errors import ConversionError

__all__ = [
    "FORMATS",
    "ConversionReport",
    "Rules",
    "convert_checkpoint",
    "convert_file",
    "convert_state",
    "detect_format",
    "read_checkpoint",
]

logger = logging.getLogger(__name__)

RULES: dict[str, Rules] = {r.name: r for r in (*resnet_family.RULES, *ssl.RULES, *official.RULES)}

FORMATS: dict[str, str] = {
    **{name: rules.summary for name, rules in RULES.items()},
    "jax_npz": "JAX/big_vision ViT .npz, read by timm's own npz loader (needs arch)",
    **{name: summary for name, (summary, _) in foreign.REFUSED.items()},
}


def _check_fmt(fmt: str) -> None:
    if fmt != "auto" and fmt not in FORMATS:
        raise ConversionError(
            f"unknown format '{fmt}'; choose one of: auto, {', '.join(sorted(FORMATS))}", fmt=fmt
        )


def convert_state(
    obj: Any, fmt: str = "auto", *, target: Target | None = None, path: str | Path | None = None,
    prefix: str | None = None, key_map: KeyMap = (),
) -> tuple[dict[str, torch.Tensor], ConversionReport]:  # fmt: skip
    """Convert a loaded checkpoint object (see :func:`read_checkpoint`) to timm key names.

    Args:
        obj: what the checkpoint file holds (a dict, possibly nested).
        fmt: a name from :data:`FORMATS`, or ``"auto"`` to detect it.
        target: key -> shape of the destination timm model, when known; the container and wrapper prefix
            are then searched (every nested dict of tensors, every dotted prefix of its keys) for the reading
            whose keys name the most of the target's tensors with the target's shapes.
        path: the file it came from (helps detection, appears in errors).
        prefix: the wrapper prefix to strip, instead of searching (``'model.'``; ``'state_dict_ema/module.'``
            also selects the container entry; ``''`` for none).
        key_map: the caller's renames, ``{regex: replacement}`` or pairs, applied after the format's own.

    Raises:
        ConversionError: no weights, a refused format, or two different networks that fit equally well
            (the message names each as a ``prefix=`` to pass).
        UsageError: a ``key_map`` pattern that is not a regular expression.

    Returns:
        ``(state_dict, report)``.
    """
    _check_fmt(fmt)
    detected, reason = fmt == "auto", "given explicitly"
    if detected:
        fmt, reason = detect_format(obj, path)
    if fmt in foreign.REFUSED:
        foreign.refuse(fmt, None if path is None else str(path))
    if fmt not in RULES:
        raise ConversionError(
            f"format '{fmt}' needs the file and an architecture; use convert_file(path, arch=...)", fmt=fmt
        )
    report = ConversionReport(fmt=fmt, detected=detected, reason=reason)
    state = RULES[fmt].apply(obj, target, report, prefix=prefix, key_map=key_map)
    logger.info(
        "converted %s as '%s': %d kept, %d renamed, %d dropped",
        path or "checkpoint",
        fmt,
        report.kept,
        len(report.renamed),
        len(report.dropped),
    )
    return state, report


def convert_file(
    path: str | Path, *, fmt: str = "auto", arch: str | None = None, prefix: str | None = None,
    key_map: KeyMap = (), **arch_kwargs: Any,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:  # fmt: skip
    """Read a checkpoint file and convert it; with ``arch``, check its keys against that timm model.

    Args:
        path: the checkpoint file.
        fmt: a name from :data:`FORMATS`, or ``"auto"``.
        arch: the timm architecture the weights are for (needed for ``.npz``, to search the container and
            prefix, and to resample/reshape).
        prefix, key_map: see :func:`convert_state`.
        **arch_kwargs: extra ``timm.create_model`` arguments describing the architecture (``depths``,
            ``num_heads``, ``img_size``, ``window_size`` ...).

    Raises:
        ConversionError: unknown or refused format, or keys that do not fit ``arch``.
        UnsafeCheckpointError: a pickle that needs arbitrary code.
    """
    _check_fmt(fmt)
    spec = None
    if arch is not None:
        from medhub import build  # deferred: build is the timm seam and imports this package

        spec = build.architecture_spec(arch, **arch_kwargs)
    path_fmt = detect_path_format(path)
    chosen = path_fmt[0] if fmt == "auto" and path_fmt else fmt
    if chosen in foreign.REFUSED:
        foreign.refuse(chosen, str(path))
    if chosen == "jax_npz":
        if arch is None:
            raise ConversionError(
                "a .npz checkpoint needs --arch (timm reads it into that model)", path=str(path)
            )
        from medhub import build

        state = build.load_npz_state(Path(path), arch, **arch_kwargs)
        report = ConversionReport(
            fmt="jax_npz",
            detected=fmt == "auto",
            reason=path_fmt[1] if path_fmt else "given explicitly",
            source_keys=len(state),
            kept=len(state),
        )
    else:
        state, report = convert_state(
            read_checkpoint(path), fmt, target=spec.shapes if spec else None, path=path, prefix=prefix,
            key_map=key_map,
        )  # fmt: skip
    if spec is not None:
        from medhub import build

        state = build.fit_to_arch(state, spec, report.adapted, report.dropped)
        check_keys(state, spec.shapes, spec.classifier_keys, arch, first_conv=spec.first_conv)
    return state, report


def check_keys(
    state: dict[str, torch.Tensor], shapes: Target, classifier_keys: set[str], arch: str,
    first_conv: str | None = None,
) -> None:  # fmt: skip
    """Raise :class:`ConversionError` unless ``state`` fits ``shapes`` up to what the build may change.

    Allowed: an absent or resized classifier, an absent ``fc_norm`` (created by ``global_pool="avg"``) and a
    first conv (``first_conv``) with another number of input channels (adapted by the build to ``in_chans``).
    """
    from medhub.build import fresh_allowed

    unexpected = set(state) - set(shapes)
    missing = {k for k in set(shapes) - set(state) - classifier_keys if not fresh_allowed(k)}
    conv = f"{first_conv}.weight" if first_conv else None

    def fits(key: str) -> bool:
        got, want = tuple(state[key].shape), tuple(shapes[key])
        return got == want or (key == conv and len(got) == len(want) > 1 and got[:1] + got[2:] == want[:1] + want[2:])

    wrong = sorted(k for k in set(state) & set(shapes) - classifier_keys if not fits(k))
    if unexpected or missing or wrong:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {listed(unexpected)}")
        if missing:
            parts.append(f"{len(missing)} missing: {listed(missing)}")
        if wrong:
            parts.append(
                f"{len(wrong)} with other shapes: "
                + listed(f"{k} {tuple(state[k].shape)} vs {tuple(shapes[k])}" for k in wrong)
            )
        raise ConversionError(
            f"the converted weights do not fit '{arch}' ({'; '.join(parts)}); check --arch (and its depth, "
            "width, heads or window) or --format" + stem_hint({k: (state[k].shape, shapes[k]) for k in wrong})
            + pool_hint(unexpected, missing)
            + (head_hint(unexpected, classifier_keys - set(state)) or stray_hint(unexpected, missing, wrong)),
            arch=arch,
            unexpected=sorted(unexpected),
            missing=sorted(missing),
        )


def convert_checkpoint(
    path: str | Path, *, fmt: str = "auto", arch: str, **arch_kwargs: Any
) -> dict[str, torch.Tensor]:
    """Convert an original checkpoint file into a state dict for ``timm.create_model(arch, **arch_kwargs)``.

    Only the classifier may be absent from the result (and is when the source had none).

    >>> import medhub
    >>> state = medhub.convert_checkpoint("swav_800ep_pretrain.pth.tar", arch="resnet50")  # doctest: +SKIP
    """
    return convert_file(path, fmt=fmt, arch=arch, **arch_kwargs)[0]
