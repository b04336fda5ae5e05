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
        under: tensors under the prefix (named or not); ``under - named`` are not the architecture's.
    """

    path: tuple[str, ...]
    prefix: str
    fits: int
    named: int
    tensors: dict[str, torch.Tensor]
    under: int = 0

    @property
    def foreign(self) -> int:
        """Tensors under the prefix that name nothing of the architecture (a deeper variant's extra blocks)."""
        return self.under - self.named

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


def shared_prefix(keys: Any) -> str:
    """The longest dotted prefix every key shares (``'model.'`` for a Lightning module), else ``''``."""
    keys = list(keys)
    if not keys:
        return ""
    common = prefixes_of(keys[0])
    for key in keys[1:]:
        common = [p for p in common if key.startswith(p)]
    return max(common, key=len, default="")


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
    under: dict[str, int] = {}
    for key, value in tensors.items():
        for p in prefixes_of(key) if prefix is None else ([prefix] if key.startswith(prefix) else []):
            under[p] = under.get(p, 0) + 1
            new = name(key[len(p) :])
            if target is None or new in target:
                named[p] = named.get(p, 0) + 1
                if target is None or tuple(value.shape) == tuple(target[new]):
                    fits[p] = fits.get(p, 0) + 1
    found = [Candidate(path, p, fits.get(p, 0), n, tensors, under[p]) for p, n in named.items()]
    return sorted(found, key=lambda c: (-c.fits, -c.named, c.foreign, len(c.prefix)))


def rivals_in_fit(c: Candidate, best: Candidate) -> bool:
    """True when ``c`` fits about as well as ``best``: as many of the architecture's tensors
    (:data:`RIVAL_SHARE`), and about as few of its own tensors outside the architecture. A ResNet-34 teacher
    beside a ResNet-18 student names every ResNet-18 tensor, but 98 of its 218 are not ResNet-18's: it is
    another architecture, not a second copy of this one."""
    share = c.fits / max(c.under, 1)
    return c.fits >= RIVAL_SHARE * best.fits and share >= RIVAL_SHARE * best.fits / max(best.under, 1)


def same_weights(a: Candidate, b: Candidate) -> bool:
    """True when two readings hold the same tensors under the same stripped names (an alias, not a rival)."""
    left, right = a.stripped(), b.stripped()
    return left.keys() == right.keys() and all(
        left[k].shape == right[k].shape and torch.equal(left[k], right[k]) for k in left
    )


def prevails(a: Candidate, b: Candidate, containers: tuple[str, ...], prefixes: tuple[str, ...]) -> bool:
    """True when the format's documented order puts ``a`` before ``b``.

    Where the container paths differ, the first differing entries must both be in ``containers`` (timm's
    ``state_dict`` before ``state_dict_ema``, DINO's ``teacher`` before ``student``); where only the prefixes
    differ, both must start with one of ``prefixes`` (``teacher.`` before ``student.``). Anything else has no
    documented order.
    """
    if a.path != b.path:
        pair = next(((x, y) for x, y in zip(a.path, b.path) if x != y), None)
        if pair is None or not all(name in containers for name in pair):
            return False
        return containers.index(pair[0]) < containers.index(pair[1])

    def rank(c: Candidate) -> int | None:
        return next((i for i, p in enumerate(prefixes) if c.prefix.startswith(p)), None)

    ra, rb = rank(a), rank(b)
    return ra is not None and rb is not None and ra < rb


def choose(
    found: list[Candidate], containers: tuple[str, ...], fmt: str, given: bool, prefixes: tuple[str, ...] = (),
    total: int | None = None,
) -> tuple[Candidate, str]:  # fmt: skip
    """The candidate to load and one sentence saying why; refuses two networks with no documented order.

    Args:
        found: every candidate, any order.
        containers: container entries in the format's order of preference (see :func:`prevails`).
        fmt: the format name (for the messages).
        given: True when the caller fixed the prefix (the sentence says so).
        prefixes: wrapper prefixes in the format's order of preference (``teacher.`` before ``student.``).
        total: number of tensors of the architecture (for the sentence), when known.

    Raises:
        ConversionError: two or more different networks fit about equally and the format does not rank them.
    """
    found = sorted(found, key=lambda c: (-c.fits, -c.named, c.foreign, len(c.path), len(c.prefix)))
    best = found[0]
    close = [c for c in found if c is not best and rivals_in_fit(c, best)]
    rivals = [c for c in close if not same_weights(c, best)]
    aliases = [c for c in close if c not in rivals]
    why = ""
    if rivals:
        contenders = [best, *rivals]
        winner = next(
            (c for c in contenders if all(prevails(c, o, containers, prefixes) for o in contenders if o is not c)),
            None,
        )
        if winner is None:
            with_container = len({c.path for c in contenders}) > 1
            names = ", ".join(f"prefix='{c.spelled(with_container)}' ({c.fits} tensors)" for c in contenders)
            raise ConversionError(
                f"the file holds {len(contenders)} different networks that fit this architecture: {names}; "
                "pass the one you mean as prefix= (medhub convert --prefix)",
                fmt=fmt,
                candidates=[c.spelled() for c in contenders],
            )
        best, others = winner, [c for c in contenders if c is not winner]
        why = (
            f"'{fmt}' checkpoints keep {best.spelled()!r} over "
            + ", ".join(repr(o.spelled()) for o in others)
            + f" (also in the file; pass prefix='{others[0].spelled()}' to load that instead)"
        )
    where = f"{best.container}, " if best.container else ""
    of = f" of the architecture's {total}" if total else ""
    reason = (
        f"network found in {where}prefix '{best.prefix}' ({'given' if given else 'searched'}): its keys name "
        f"{best.named}{of} tensors, {best.fits} with the same shape"
    )
    runner = next((c for c in found if c is not best and c not in aliases), None)
    if runner and not why and not given and runner.fits >= best.fits / 2:
        reason += f"; next best prefix '{runner.spelled()}' fits {runner.fits}"
    if aliases:
        reason += "; the same weights also appear under " + ", ".join(f"'{a.spelled()}'" for a in aliases)
    return best, reason + (f"; {why}" if why else "")

