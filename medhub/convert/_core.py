"""Declarative conversion rules and the engine that applies them.

A :class:`Rules` record says, for one checkpoint family, which container entry holds the weights, which
keys belong to networks the original project does not publish as its backbone (dropped), which one
prefix wraps the backbone (stripped, longest candidate first, and the result asserted), which key renames
reach timm names, and an optional hook for what a rename cannot say (tensor reshapes, table resizes).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from medhub.errors import ConversionError

logger = logging.getLogger(__name__)

Target = Mapping[str, tuple[int, ...]]
"""Key -> shape of the timm model the weights are for (``None`` when the architecture is not known)."""

# Wrapper names that must never survive a conversion at the start of a key (the Version2 loader bug:
# `replace('module.', '')` ran before `replace('module.encoder_q.', '')`, leaving `encoder_q.` behind).
WRAPPER_TOKENS = (
    "module.",
    "_orig_mod.",
    "encoder_q.",
    "encoder_k.",
    "base_encoder.",
    "momentum_encoder.",
    "encoder.",
    "backbone.",
    "swin_model.",
    "teacher.",
    "student.",
)
_MAX_LISTED = 12


def listed(keys: Any, limit: int = _MAX_LISTED) -> str:
    """``a, b, c … (+N more)``: a short, sorted rendering of many keys for error messages."""
    keys = sorted(keys)
    text = ", ".join(keys[:limit])
    return text + (f" … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def stem_hint(wrong: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> str:
    """A pointer to the CIFAR-style stem when a conv is 3x3 in the weights but 7x7 in the arch (else "").

    ``wrong`` maps each key of another shape to ``(shape in the weights, shape in the arch)``.
    """
    if any(tuple(got[2:]) == (3, 3) and tuple(want[2:]) == (7, 7) for got, want in wrong.values()):
        return ("; a 3x3 first conv where the arch has 7x7 is a CIFAR-style stem (medhub reproduce --cifar-stem):"
                " build it with medhub.train.network.build_network(..., stem='cifar')")
    return ""


def pool_hint(unexpected: Any, missing: Any) -> str:
    """A pointer to ``global_pool='avg'`` when the weights have ``fc_norm`` where the arch has ``norm`` (else "")."""
    if any(k.startswith("fc_norm.") for k in unexpected) and any(k.startswith("norm.") for k in missing):
        return ("; the weights have fc_norm and no final norm: they were fine-tuned with average pooling, "
                "pass global_pool='avg'")
    return ""


def head_hint(unexpected: Any, absent_classifier: Any) -> str:
    """The ``key_map`` to pass when the only unexpected keys are one linear layer and the arch's classifier
    is absent from the weights (a fine-tuned head under the wrapper's own name), else ""."""
    modules = {k.rsplit(".", 1)[0] for k in unexpected}
    heads = {k.rsplit(".", 1)[0] for k in absent_classifier if k.endswith(".weight")}
    if len(modules) != 1 or len(heads) != 1 or not {k.rsplit(".", 1)[1] for k in unexpected} <= {"weight", "bias"}:
        return ""
    (old,), (new,) = modules, heads
    pattern = "^" + old.replace(".", "\\.") + "\\."
    return f"; if {old}.* is your fine-tuned head, pass key_map={{r'{pattern}': '{new}.'}} (medhub convert --key-map)"


MAX_STRAY = 4
"""At most this many unexpected keys, with nothing missing, read as buffers saved beside the network."""


def stray_hint(unexpected: Any, missing: Any, wrong: Any) -> str:
    """The ``key_map`` that drops a few unexpected keys when nothing is missing or misshapen, else "".

    TorchXRayVision's DenseNet keeps ``op_threshs`` (calibration thresholds) beside ``features``/``classifier``;
    such buffers are not part of the timm network, and the strict contract refuses them until the caller drops
    them by name.
    """
    unexpected = sorted(unexpected)
    if missing or wrong or not unexpected or len(unexpected) > MAX_STRAY:
        return ""
    names = "|".join(re.escape(k) for k in unexpected)
    pattern = f"^{names}$" if len(unexpected) == 1 else f"^({names})$"
    return (
        f"; if {', '.join(unexpected)} {'is' if len(unexpected) == 1 else 'are'} not part of the network (saved "
        f"beside it), drop {'it' if len(unexpected) == 1 else 'them'} with key_map={{r'{pattern}': ''}} "
        f"(medhub convert --key-map '{pattern}=')"
    )


@dataclass
class ConversionReport:
    """What a conversion did, for the caller, the log and ``medhub convert``.

    Attributes:
        fmt: the format name applied.
        detected: True when ``fmt="auto"`` chose it.
        reason: why that format (the evidence auto-detection used, or "given explicitly").
        container: the top-level entry that held the weights (``state_dict``, ``model``, ``teacher``…).
        prefix: the wrapper prefix stripped from every kept key ('' when none).
        found: why that container and prefix (searched against the architecture, or given by the caller).
        key_map: the caller's ``regex -> replacement`` renames, as given.
        source_keys: number of tensors in the container before conversion.
        renamed: old key -> new key for every key whose name changed.
        dropped: keys removed (other networks, heads, buffers timm recomputes).
        adapted: tensors changed in value or shape, one line each.
        metadata: top-level non-weight entries of the file (epoch, args, …), as short strings.
        notes: anything else worth knowing.
    """

    fmt: str
    detected: bool = False
    reason: str = "given explicitly"
    container: str | None = None
    prefix: str = ""
    source_keys: int = 0
    kept: int = 0
    renamed: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    found: str = ""
    key_map: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return asdict(self)

    def summary(self) -> str:
        """A few human-readable lines."""
        how = "detected" if self.detected else "given"
        lines = [
            f"format: {self.fmt} ({how}: {self.reason})",
            f"container: {self.container or '(top level)'}; prefix stripped: {self.prefix or '(none)'}",
            *([f"found: {self.found}"] if self.found else []),
            *([f"key_map: {'; '.join(self.key_map)}"] if self.key_map else []),
            f"keys: {self.source_keys} in source, {self.kept} kept, {len(self.renamed)} renamed, "
            f"{len(self.dropped)} dropped",
        ]
        if self.dropped:
            lines.append(f"dropped: {listed(self.dropped, 8)}")
        lines += [f"adapted: {a}" for a in self.adapted]
        lines += [f"note: {n}" for n in self.notes]
        if self.metadata:
            lines.append("file metadata: " + ", ".join(f"{k}={v}" for k, v in self.metadata.items()))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


KeyMap = Mapping[str, str] | Sequence[tuple[str, str]]
"""A caller's ``(regex, replacement)`` renames, applied to stripped keys after the format's own."""


def compile_key_map(pairs: Any) -> list[tuple[re.Pattern, str]]:
    """Compile a caller's ``key_map``: a dict or pairs of ``(regex, replacement)``.

    Raises:
        UsageError: a pattern that is not a valid regular expression, or pairs of the wrong form.
    """
    from medhub.errors import UsageError

    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs or ())
    out = []
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise UsageError(f"key_map entries are (regex, replacement) pairs of strings, got {item!r}")
        try:
            out.append((re.compile(item[0]), item[1]))
        except re.error as exc:
            raise UsageError(f"key_map pattern '{item[0]}' is not a valid regular expression ({exc})") from None
    return out


def apply_key_map(state: dict, pairs: list[tuple[re.Pattern, str]], report: ConversionReport) -> dict:
    """A caller's compiled ``key_map`` on stripped keys: renames recorded; a key renamed to ``''`` is dropped.

    Raises:
        ConversionError: two keys renamed to the same name.
    """
    earlier = {new: old for old, new in report.renamed.items()}
    out = {}
    for key, value in state.items():
        new = key
        for pattern, replacement in pairs:
            new = pattern.sub(replacement, new)
        source = earlier.get(key, report.prefix + key)
        if not new:
            report.dropped.append(source)
            continue
        if new != key:
            report.renamed[source] = new
        if new in out:
            raise ConversionError(f"key_map renames two keys to '{new}'; make the patterns more specific")
        out[new] = value
    return out


def unwrap_sequential_heads(state: dict, target: Target, report: ConversionReport) -> dict:
    """``fc.0.weight`` -> ``fc.weight`` where a head was a ``Sequential`` holding one layer with weights.

    Fine-tuning code wraps the classifier as ``Sequential(Linear, Sigmoid)`` (CheXNet, the JLiang lab) or
    ``Sequential(Dropout, Linear)``; only a module whose one indexed child carries tensors, and whose plain
    name the target has and the state lacks, is renamed.
    """
    children: dict[str, set[str]] = {}
    for key in state:
        match = re.match(r"^(.+)\.(\d+)\.(weight|bias)$", key)
        if match:
            children.setdefault(match.group(1), set()).add(match.group(2))
    moves = {}
    for key in state:
        match = re.match(r"^(.+)\.(\d+)\.(weight|bias)$", key)
        if not match or key in target or len(children[match.group(1)]) != 1:
            continue
        new = f"{match.group(1)}.{match.group(3)}"
        if new in target and new not in state:
            moves[key] = new
    if not moves:
        return state
    earlier = {new: old for old, new in report.renamed.items()}
    for old, new in moves.items():
        report.renamed[earlier.get(old, report.prefix + old)] = new
    report.notes.append(
        "a Sequential head (" + ", ".join(sorted({k.rsplit(".", 2)[0] + "." + k.split(".")[-2] for k in moves}))
        + ") read as the plain classifier"
    )
    return {moves.get(k, k): v for k, v in state.items()}


Hook = Callable[[dict[str, torch.Tensor], "Target | None", ConversionReport], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Rules:
    """One checkpoint family, declaratively.

    Attributes:
        name: format name (``moco``, ``swav``, …).
        summary: one line for ``FORMATS`` listings.
        containers: top-level entries tried in order to find the weights; a flat dict of tensors needs none.
        prefixes: wrapper prefixes, of which the longest one shared by every kept key is stripped.
            ``''`` among them allows raw files with no wrapper.
        drop: key prefixes (after an optional DataParallel ``module.``) of tensors that are not part of
            the published backbone (projection heads, predictors, momentum encoders, queues, decoders).
        renames: ``(regex, replacement)`` pairs applied in order to each stripped key.
        hook: a function for what renames cannot express (reshapes, table resizing, layout moves).
        preferred_prefixes: wrapper prefixes in the order the project documents when one file holds several
            copies of the network under one container (``teacher.`` before ``student.``); ``containers``
            plays that part for copies in separate entries.
    """

    name: str
    summary: str
    containers: tuple[str, ...] = ("state_dict", "model")
    prefixes: tuple[str, ...] = ("module.", "")
    drop: tuple[str, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()
    hook: Hook | None = None
    preferred_prefixes: tuple[str, ...] = ()

    def apply(
        self, obj: Any, target: Target | None, report: ConversionReport, *, prefix: str | None = None,
        key_map: KeyMap = (),
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """Convert a loaded checkpoint object into a timm-named state dict, filling ``report``.

        With ``target`` (or a caller's ``prefix``) the container and wrapper prefix are searched
        (:mod:`medhub.convert._locate`); without, the format's listed containers and prefixes are used.
        ``key_map`` (regex, replacement) pairs run after the format's renames, on the stripped keys; a key
        renamed to ``''`` is dropped.
        """
        user_map = compile_key_map(key_map)
        report.key_map = [f"{pattern.pattern} -> {replacement}" for pattern, replacement in user_map]
        state = self._locate(obj, target, report, prefix, user_map)
        if state is None:
            state = self._unwrap(obj, report)
            report.source_keys = len(state)
            state = self._drop(state, report)
            state = self._strip(state, report)
        state = self._rename(state, report)
        if user_map:
            state = apply_key_map(state, user_map, report)
        if self.hook is not None:
            state = self.hook(state, target, report)
        if target is not None:
            state = unwrap_sequential_heads(state, target, report)
            state = fill_batchnorm_counters(state, target, report)
        report.kept = len(state)
        return state

    def _locate(
        self, obj: Any, target: Target | None, report: ConversionReport, prefix: str | None,
        user_map: list[tuple[re.Pattern, str]],
    ) -> dict[str, torch.Tensor] | None:  # fmt: skip
        """The searched (or caller-given) container and prefix; ``None`` when nothing fits (listed names used)."""
        from medhub.convert import _locate

        if (target is None and prefix is None) or not isinstance(obj, Mapping):
            return None
        container, key_prefix = None, prefix
        if prefix is not None and "/" in prefix:
            container, _, key_prefix = prefix.rpartition("/")
        renames = [(re.compile(p), r) for p, r in self.renames] + list(user_map)

        def name(key: str) -> str:
            for pattern, replacement in renames:
                key = pattern.sub(replacement, key)
            return key

        found, everything = [], dict(_locate.tensor_dicts(obj))
        for path, tensors in everything.items():
            if container is not None and "/".join(path) != container:
                continue
            dropping = self._drop_pattern(_locate.shared_prefix(tensors))
            kept = {k: v for k, v in tensors.items() if not (dropping and dropping.match(k))}
            found += _locate.candidates(kept, path, target, name, key_prefix)
        if prefix is not None and not found:
            raise ConversionError(
                f"no tensor of the file is under prefix '{prefix}'"
                + (" that names a tensor of the architecture" if target is not None else "")
                + "; leave prefix unset to search, or check its spelling (CONTAINER/ before it selects an entry)",
                fmt=self.name,
            )
        if not found or (prefix is None and not max(c.fits for c in found)):
            return None
        best, reason = _locate.choose(
            found, self.containers, self.name, given=prefix is not None, prefixes=self.preferred_prefixes,
            total=len(target) if target is not None else None,
        )  # fmt: skip
        report.container, report.prefix, report.found = best.container, best.prefix, reason
        report.source_keys = len(everything[best.path])
        level: Any = obj
        for entry in best.path:
            report.metadata.update(describe_metadata(level, skip=entry))
            level = level[entry]
        state = self._drop(everything[best.path], report, _locate.shared_prefix(everything[best.path]))
        outside = sorted(k for k in state if not k.startswith(best.prefix))
        if outside:
            report.dropped += outside
            report.notes.append(
                f"{len(outside)} tensors outside prefix '{best.prefix}' dropped (other modules of the wrapper): "
                + listed(outside, 6)
            )
        return {k[len(best.prefix) :]: v for k, v in state.items() if k.startswith(best.prefix)}

    def _drop_pattern(self, wrapper: str = "") -> re.Pattern | None:
        """Keys to drop: ``drop`` entries after an optional ``module.`` and, when the dict's keys all share a
        wrapper prefix (a Lightning ``model.``), after that too."""
        if not self.drop:
            return None
        outer = f"(?:{re.escape(wrapper)})?" if wrapper else ""
        return re.compile(
            r"^(?:module\.)?{}(?:module\.)?(?:{})".format(outer, "|".join(re.escape(d) for d in self.drop))
        )

    def _unwrap(self, obj: Any, report: ConversionReport) -> dict[str, torch.Tensor]:
        if not isinstance(obj, Mapping):
            raise ConversionError(
                f"a '{self.name}' checkpoint must be a dict, got {type(obj).__name__}; "
                "save `model.state_dict()` rather than the model object",
                fmt=self.name,
            )
        current: Mapping = obj
        for _ in range(3):  # containers may nest: {'state_dict': {'model': ...}} is seen in the wild
            if is_state_dict(current):
                break
            entry = next((c for c in self.containers if isinstance(current.get(c), Mapping)), None)
            if entry is None:
                raise ConversionError(
                    f"no weights found for format '{self.name}': expected one of the entries "
                    f"{', '.join(self.containers)}; the file has {listed(map(str, current))}",
                    fmt=self.name,
                )
            report.metadata.update(describe_metadata(current, skip=entry))
            report.container = entry if report.container is None else f"{report.container}/{entry}"
            current = current[entry]
        tensors = {k: v for k, v in current.items() if isinstance(v, torch.Tensor)}
        others = sorted(set(map(str, current)) - set(tensors))
        if others:
            raise ConversionError(
                f"entries that are not tensors inside the weights ({listed(others)}); "
                f"this is not a '{self.name}' checkpoint",
                fmt=self.name,
            )
        return tensors

    def _drop(self, state: dict, report: ConversionReport, wrapper: str = "") -> dict:
        pattern = self._drop_pattern(wrapper)
        if pattern is None:
            return state
        kept = {}
        for key, value in state.items():
            if pattern.match(key):
                report.dropped.append(key)
            else:
                kept[key] = value
        return kept

    def _strip(self, state: dict, report: ConversionReport) -> dict:
        if not state:
            raise ConversionError(
                f"no weights left after dropping the non-backbone keys of '{self.name}'", fmt=self.name
            )
        for prefix in sorted(self.prefixes, key=len, reverse=True):
            if all(key.startswith(prefix) for key in state):
                report.prefix = prefix
                stripped = {key[len(prefix) :]: value for key, value in state.items()}
                break
        else:
            expected = " or ".join(repr(p) for p in self.prefixes if p)
            odd = [k for k in state if not any(k.startswith(p) for p in self.prefixes if p)]
            raise ConversionError(
                f"format '{self.name}' expects every backbone key to start with {expected}; these do not: "
                f"{listed(odd)}. Check --format (auto-detection may help)",
                fmt=self.name,
            )
        leftover = [k for k in stripped if k.startswith(WRAPPER_TOKENS)]
        if leftover:
            raise ConversionError(
                f"after stripping '{report.prefix}', keys still carry a wrapper name: {listed(leftover)}; "
                f"the file is not laid out like a '{self.name}' checkpoint",
                fmt=self.name,
            )
        return stripped

    def _rename(self, state: dict, report: ConversionReport) -> dict:
        if not self.renames:
            return state
        compiled = [(re.compile(p), r) for p, r in self.renames]
        out = {}
        for key, value in state.items():
            new = key
            for pattern, replacement in compiled:
                new = pattern.sub(replacement, new)
            if new != key:
                report.renamed[report.prefix + key] = new
            if new in out:
                raise ConversionError(
                    f"two source keys map to '{new}' in format '{self.name}'", fmt=self.name
                )
            out[new] = value
        return out


def is_state_dict(obj: Mapping) -> bool:
    """True when a mapping is a flat dict of tensors (at least one, and no nested dicts)."""
    values = list(obj.values())
    return (
        bool(values)
        and any(isinstance(v, torch.Tensor) for v in values)
        and not any(isinstance(v, Mapping) for v in values)
    )


def describe_metadata(obj: Mapping, skip: str) -> dict[str, str]:
    """Short string forms of a checkpoint's top-level entries other than the weights."""
    out = {}
    for key, value in obj.items():
        if key == skip:
            continue
        if isinstance(value, (int, float, str, bool)) or value is None:
            out[str(key)] = str(value)[:60]
        else:
            out[str(key)] = f"<{type(value).__name__}>"
    return out


def fill_batchnorm_counters(state: dict, target: Target, report: ConversionReport) -> dict:
    """Add ``num_batches_tracked`` where the target has it and the source BatchNorm lacked it (FrozenBN)."""
    added = 0
    for key in target:
        counter = key.endswith(".num_batches_tracked") and key not in state
        if counter and key[: -len("num_batches_tracked")] + "running_mean" in state:
            state[key] = torch.tensor(0, dtype=torch.long)
            added += 1
    if added:
        report.adapted.append(f"added num_batches_tracked=0 to {added} BatchNorm layers (source had none)")
    return state


def rename_keys(state: dict, pairs: tuple[tuple[str, str], ...], report: ConversionReport) -> dict:
    """Apply ``(regex, replacement)`` renames inside a hook, recording them like :meth:`Rules._rename`."""
    compiled = [(re.compile(p), r) for p, r in pairs]
    earlier = {new: old for old, new in report.renamed.items()}  # names given by previous steps
    out = {}
    for key, value in state.items():
        new = key
        for pattern, replacement in compiled:
            new = pattern.sub(replacement, new)
        if new != key:
            report.renamed[earlier.get(key, report.prefix + key)] = new
        if new in out:
            raise ConversionError(f"two source keys map to '{new}'")
        out[new] = value
    return out
