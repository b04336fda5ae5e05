"""Find the network inside a checkpoint: which nested container and which wrapper prefix map its keys onto
the architecture's key set.

People save networks inside training wrappers in every combination: ``{'state_dict': …}``, ``{'model': …}``,
``{'net': …}``, Lightning ``.ckpt`` files, EMA / teacher / student entries, and keys behind DataParallel
(``module.``), ``torch.compile`` (``_orig_mod.``), Lightning (``model.``) or user attributes
(``densenet121.``, ``backbone.``, ``encoder.``). Instead of listing names, every dict of tensors in the file
and every dotted prefix of its keys is tried: the candidate whose stripped (and renamed) keys name the most
tensors of the architecture, with the architecture's shapes, wins. Two candidates that fit about as well and
hold different weights are two networks: the format's documented preference decides (a DINO teacher over
its student, timm's ``state_dict`` over ``state_dict_ema``), otherwise the file is refused with both named.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from medhub.errors import ConversionError

MAX_DEPTH = 4
RIVAL_SHARE = 0.9
"""A second candidate fitting at least this share of the best one's tensors counts as another network."""


@dataclass
class Candidate:
    """One ``(container, prefix)`` reading of a checkpoint and how well it fits the architecture.

    Attributes:
        path: the entries leading to the dict of tensors (``('state_dict',)``; ``()`` for a flat file).
        prefix: the wrapper prefix stripped from its keys (``''`` for none).
        fits: tensors whose stripped name is the architecture's, with the architecture's shape.
        named: tensors whose stripped name is the architecture's (any shape).
        tensors: the dict of tensors the path leads to.
    """

    path: tuple[str, ...]
    prefix: str
    fits: int
    named: int
    tensors: dict[str, torch.Tensor]

    @property
    def container(self) -> str | None:
        return "/".join(self.path) or None

    def spelled(self, with_container: bool = True) -> str:
        """How a caller names it: ``prefix='state_dict_ema/module.'`` or ``prefix='model.'``."""
        return (f"{self.container}/" if with_container and self.path else "") + self.prefix

    def stripped(self) -> dict[str, torch.Tensor]:
        return {k[len(self.prefix) :]: v for k, v in self.tensors.items() if k.startswith(self.prefix)}


def tensor_dicts(obj: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, torch.Tensor]]]:
    """Every mapping inside ``obj`` (down to :data:`MAX_DEPTH` entries) holding tensors under string keys."""
    if not isinstance(obj, Mapping) or len(path) > MAX_DEPTH:
        return []
    found = []
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors:
        found.append((path, tensors))
    for key, value in obj.items():
        if isinstance(value, Mapping):
            found += tensor_dicts(value, (*path, str(key)))
    return found


def prefixes_of(key: str) -> list[str]:
    """``'a.b.c'`` -> ``['', 'a.', 'a.b.']``: every wrapper prefix a key could carry."""
    parts = key.split(".")
    return ["".join(p + "." for p in parts[:i]) for i in range(len(parts))]


def candidates(
    tensors: dict[str, torch.Tensor],
    path: tuple[str, ...],
    target: Mapping[str, tuple[int, ...]] | None,
    name: Callable[[str], str],
    prefix: str | None = None,
) -> list[Candidate]:
    """Score every prefix of ``tensors``' keys (or only ``prefix``) against ``target``; best first.

    ``name`` maps a stripped key to its timm name (the format's renames and the caller's key_map). Without
    ``target`` (no architecture given) every key under the prefix counts.
    """
    fits: dict[str, int] = {}
    named: dict[str, int] = {}
    for key, value in tensors.items():
        for p in prefixes_of(key) if prefix is None else ([prefix] if key.startswith(prefix) else []):
            new = name(key[len(p) :])
            if target is None or new in target:
                named[p] = named.get(p, 0) + 1
                if target is None or tuple(value.shape) == tuple(target[new]):
                    fits[p] = fits.get(p, 0) + 1
    found = [Candidate(path, p, fits.get(p, 0), n, tensors) for p, n in named.items()]
    return sorted(found, key=lambda c: (-c.fits, -c.named, len(c.prefix)))


def same_weights(a: Candidate, b: Candidate) -> bool:
    """True when two readings hold the same tensors under the same stripped names (an alias, not a rival)."""
    left, right = a.stripped(), b.stripped()
    return left.keys() == right.keys() and all(
        left[k].shape == right[k].shape and torch.equal(left[k], right[k]) for k in left
    )


def choose(found: list[Candidate], preferred: tuple[str, ...], fmt: str, given: bool) -> tuple[Candidate, str]:
    """The candidate to load and one sentence saying why; refuses two different networks of equal standing.

    Args:
        found: every candidate, any order.
        preferred: container names in the format's order of preference (earlier wins a tie).
        fmt: the format name (for the messages).
        given: True when the caller fixed the prefix (the sentence says so).

    Raises:
        ConversionError: two or more networks fit about equally and nothing in the format ranks them.
    """
    found = sorted(found, key=lambda c: (-c.fits, -c.named, len(c.path), len(c.prefix)))
    best = found[0]
    close = [c for c in found if c.fits >= RIVAL_SHARE * best.fits and c is not best]
    rivals = [c for c in close if not same_weights(c, best)]
    aliases = [c for c in close if c not in rivals]
    if rivals:
        rank = {name: i for i, name in enumerate(preferred)}

        def standing(c: Candidate) -> int:
            return rank.get(c.path[0], len(rank)) if c.path else -1

        contenders = sorted([best, *rivals], key=lambda c: (standing(c), -c.fits))
        if standing(contenders[0]) == standing(contenders[1]):
            tied = [c for c in contenders if standing(c) == standing(contenders[0])]
            with_container = len({c.path for c in tied}) > 1
            names = ", ".join(f"prefix='{c.spelled(with_container)}' ({c.fits} tensors)" for c in tied)
            raise ConversionError(
                f"the file holds {len(tied)} different networks that fit this architecture: {names}; "
                "pass the one you mean as prefix= (medhub convert --prefix)",
                fmt=fmt,
                candidates=[c.spelled() for c in tied],
            )
        best, others = contenders[0], contenders[1:]
        why = (
            f"'{fmt}' checkpoints keep {best.container or 'the top level'} over "
            + ", ".join(o.spelled() for o in others)
            + " (also in the file; pass prefix='" + others[0].spelled() + "' to load that instead)"
        )
    else:
        why = ""
    where = f"{best.container}, " if best.container else ""
    reason = (
        f"network found in {where}prefix '{best.prefix}' ({'given' if given else 'searched'}): "
        f"{best.fits} tensors match the architecture's names and shapes"
    )
    runner = next((c for c in found if c is not best and c not in aliases and c.fits), None)
    if runner and not why and not given:
        reason += f"; next best prefix '{runner.spelled()}' matches {runner.fits}"
    if aliases:
        reason += "; the same weights also appear under " + ", ".join(f"'{a.spelled()}'" for a in aliases)
    return best, reason + (f"; {why}" if why else "")
