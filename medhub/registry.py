"""Load, validate and query the registry: the built-in ``registry.yaml`` plus the user's overlays.

Overlays come from ``MEDHUB_REGISTRY=path1:path2`` and ``~/.config/medhub/registry.d/*.yaml``; they merge
over the built-in file, and an id defined twice is an error that names both files. An overlay may also
list ``mirrors``: site copies of a checkpoint's weights (written by ``medhub unpack`` and ``medhub mirror``),
tried before the checkpoint's own sources. Loading never imports torch or timm; the deep checks against
timm live in :mod:`medhub.registry_check`.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from medhub.errors import RegistryError, UnknownModelError, UnknownTaskError
from medhub.schema import RANDOM_PREFIX, Checkpoint, PublishedComparison, ReportedResult, Task, WeightSource

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
SECTIONS = ("checkpoints", "tasks", "results", "comparisons", "mirrors")


def builtin_registry_path() -> Path:
    """The registry shipped with medhub: inside the wheel, or at the top of a source checkout."""
    shipped = PACKAGE_DIR / "_data" / "registry.yaml"
    return shipped if shipped.exists() else PACKAGE_DIR.parent / "registry.yaml"


def config_dir() -> Path:
    """medhub's per-user configuration folder (``$XDG_CONFIG_HOME/medhub`` or ``~/.config/medhub``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "medhub"


def user_overlay_dir() -> Path:
    """Folder whose ``*.yaml`` files merge over the built-in registry."""
    return config_dir() / "registry.d"


def overlay_paths() -> list[Path]:
    """Overlay files in merge order: ``MEDHUB_REGISTRY`` entries first, then ``registry.d/*.yaml``."""
    paths = [Path(p) for p in os.environ.get("MEDHUB_REGISTRY", "").split(os.pathsep) if p]
    folder = user_overlay_dir()
    if folder.is_dir():
        paths += sorted(folder.glob("*.yaml"))
    return paths


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """A safe YAML loader (libyaml's C parser when present) that refuses duplicate mapping keys."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def read_yaml(path: Path) -> dict:
    """Parse one registry file, refusing duplicate keys; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read registry file ({exc.strerror}); check the path", path=path) from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RegistryError(f"{path}:{line}: invalid YAML: {problem}; fix the file and retry", path=path) from exc
    if data is None:
        return {}
    if not isinstance(data, dict) or not set(data) <= {*SECTIONS, "version"}:
        raise RegistryError(
            f"{path}: a registry file is a mapping with sections {', '.join(SECTIONS)}; found "
            f"{sorted(data) if isinstance(data, dict) else type(data).__name__}",
            path=path,
        )
    return data


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(entry)"
    return f"field '{where}': {first['msg']}"


def _parse_mirrors(path: Path, data: dict) -> dict[str, tuple[WeightSource, ...]]:
    """The ``mirrors`` section: ``{checkpoint id: [weight source, ...]}``; errors name file, id and field."""
    raw = data.get("mirrors") or {}
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: 'mirrors' must map checkpoint ids to lists of weight sources", path=path)
    mirrors = {}
    for entry_id, sources in raw.items():
        if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
            raise RegistryError(f"{path}: mirrors.{entry_id}: must be a list of weight sources", path=path)
        try:
            mirrors[str(entry_id)] = tuple(WeightSource(**s) for s in sources)
        except ValidationError as exc:
            raise RegistryError(f"{path}: mirrors.{entry_id}: {_describe(exc)}", path=path) from exc
        except TypeError as exc:
            raise RegistryError(f"{path}: mirrors.{entry_id}: {exc}", path=path) from exc
    return mirrors


def _parse_entries(path: Path, data: dict) -> tuple[dict, dict, list]:
    """Validate one file's sections into schema objects; errors name file, entry and field."""
    checkpoints, tasks, results = {}, {}, []
    for section, model, store in (("checkpoints", Checkpoint, checkpoints), ("tasks", Task, tasks)):
        entries = data.get(section) or {}
        if not isinstance(entries, dict):
            raise RegistryError(f"{path}: '{section}' must map ids to entries", path=path)
        for entry_id, body in entries.items():
            if not isinstance(body, dict):
                raise RegistryError(f"{path}: {section}.{entry_id}: entry must be a mapping", path=path)
            try:
                store[entry_id] = model(id=entry_id, **body)
            except ValidationError as exc:
                raise RegistryError(f"{path}: {section}.{entry_id}: {_describe(exc)}", path=path) from exc
            except TypeError as exc:
                raise RegistryError(f"{path}: {section}.{entry_id}: {exc}", path=path) from exc
    raw_results = data.get("results") or []
    if not isinstance(raw_results, list):
        raise RegistryError(f"{path}: 'results' must be a list of results", path=path)
    for index, body in enumerate(raw_results):
        try:
            results.append(ReportedResult(**body))
        except (ValidationError, TypeError) as exc:
            detail = _describe(exc) if isinstance(exc, ValidationError) else str(exc)
            label = f"{body.get('model')}/{body.get('task')}" if isinstance(body, dict) else index
            raise RegistryError(f"{path}: results[{index}] ({label}): {detail}", path=path) from exc
    return checkpoints, tasks, results


def _parse_comparisons(path: Path, data: dict) -> list[PublishedComparison]:
    """The ``comparisons`` section: published deltas and p-values between two checkpoints."""
    raw = data.get("comparisons") or []
    if not isinstance(raw, list):
        raise RegistryError(f"{path}: 'comparisons' must be a list of comparisons", path=path)
    out = []
    for index, body in enumerate(raw):
        try:
            out.append(PublishedComparison(**body))
        except (ValidationError, TypeError) as exc:
            detail = _describe(exc) if isinstance(exc, ValidationError) else str(exc)
            raise RegistryError(f"{path}: comparisons[{index}]: {detail}", path=path) from exc
    return out


@dataclass(frozen=True)
class Registry:
    """Validated, immutable registry contents with the file each entry came from."""

    checkpoints: dict[str, Checkpoint]
    tasks: dict[str, Task]
    results: tuple[ReportedResult, ...]
    origin: dict[str, Path] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    comparisons: tuple[PublishedComparison, ...] = ()

    # ---- queries -------------------------------------------------------------------------
    def resolve_id(self, name: str) -> str:
        """Canonical id for an id or alias; raises :class:`UnknownModelError` with suggestions."""
        if name in self.checkpoints:
            return name
        if name in self.aliases:
            return self.aliases[name]
        close = difflib.get_close_matches(name, [*self.checkpoints, *self.aliases], n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run 'medhub list' to see every id"
        raise UnknownModelError(f"unknown checkpoint '{name}'{hint}", model_id=name, suggestions=close)

    def get_model(self, name: str) -> Checkpoint:
        """The checkpoint entry for an id or alias."""
        return self.checkpoints[self.resolve_id(name)]

    def get_task(self, name: str) -> Task:
        """The task entry for an id; raises :class:`UnknownTaskError` with suggestions."""
        if name in self.tasks:
            return self.tasks[name]
        close = difflib.get_close_matches(name, list(self.tasks), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run 'medhub tasks' to see every task"
        raise UnknownTaskError(f"unknown task '{name}'{hint}", task_id=name, suggestions=close)

    def list_models(
        self,
        pattern: str | None = None,
        *,
        arch: str | None = None,
        objective: str | None = None,
        data: str | None = None,
        task: str | None = None,
    ) -> list[Checkpoint]:
        """Checkpoints matching every given filter (shell-style wildcards, case-insensitive)."""
        with_task = {r.model for r in self.results if task and r.task == task}
        found = []
        for entry in self.checkpoints.values():
            if pattern and not _any_match([entry.id, *entry.aliases], pattern):
                continue
            if arch and not _any_match([entry.arch, entry.family, entry.id.split("_")[0]], arch):
                continue
            if objective and not _any_match([entry.objective, *(s.objective for s in entry.lineage)], objective):
                continue
            if data and not _any_match(list(entry.data_chain), data):
                continue
            if task and entry.id not in with_task:
                continue
            found.append(entry)
        return sorted(found, key=lambda e: e.id)

    def results_for(self, *, model: str | None = None, task: str | None = None) -> list[ReportedResult]:
        """Reported results filtered by model (id, alias or ``random:arch``) and/or task."""
        if model and not model.startswith(RANDOM_PREFIX):
            model = self.resolve_id(model)
        if task:
            self.get_task(task)
        return [r for r in self.results if (not model or r.model == model) and (not task or r.task == task)]


def _any_match(values: list[str], pattern: str) -> bool:
    pattern = pattern.lower()
    return any(fnmatch.fnmatchcase(v.lower(), pattern) for v in values)


def merge(files: list[Path]) -> Registry:
    """Merge registry files in order; an id or alias defined twice names both files.

    One clash is allowed on purpose: a later file may fulfil a *recipe-only* checkpoint (no weights yet) with
    an entry that has weights, as ``medhub adapt --id <that id>`` does. The recipe entry's aliases carry over.
    ``mirrors`` sections are applied last, in file order; a mirror of an id no file defines is skipped with a
    warning (a site overlay written by a newer medhub must not stop an older one from starting).
    """
    checkpoints: dict[str, Checkpoint] = {}
    tasks: dict[str, Task] = {}
    results: list[ReportedResult] = []
    comparisons: list[PublishedComparison] = []
    origin: dict[str, Path] = {}
    aliases: dict[str, str] = {}
    mirrors: list[tuple[Path, str, tuple[WeightSource, ...]]] = []
    builtin = builtin_registry_path().resolve()
    for path in files:
        data = read_yaml(path)
        new_ckpts, new_tasks, new_results = _parse_entries(path, data)
        if path.resolve() != builtin:
            check_overlay(path, data, new_ckpts, known_archs={c.arch for c in checkpoints.values()})
        mirrors += [(path, entry_id, sources) for entry_id, sources in _parse_mirrors(path, data).items()]
        for kind, new, store in (("checkpoint", new_ckpts, checkpoints), ("task", new_tasks, tasks)):
            for entry_id, entry in new.items():
                key = f"{kind}:{entry_id}"
                if kind == "checkpoint" and fulfils_recipe(checkpoints.get(entry_id), entry):
                    merged_aliases = tuple(dict.fromkeys((*checkpoints[entry_id].aliases, *entry.aliases)))
                    entry = new_ckpts[entry_id] = entry.model_copy(update={"aliases": merged_aliases})
                elif key in origin or (kind == "checkpoint" and entry_id in aliases):
                    first = origin.get(key) or origin[f"checkpoint:{aliases[entry_id]}"]
                    raise RegistryError(
                        f"{kind} id '{entry_id}' is defined in both {first} and {path}; rename one of them",
                        path=path,
                    )
                store[entry_id] = entry
                origin[key] = path
        for entry in new_ckpts.values():
            for alias in entry.aliases:
                if aliases.get(alias) == entry.id:  # carried over from the recipe entry it fulfils
                    continue
                if alias in aliases or alias in checkpoints:
                    other = origin[f"checkpoint:{aliases.get(alias, alias)}"]
                    raise RegistryError(
                        f"alias '{alias}' of '{entry.id}' ({path}) clashes with an id or alias in {other}",
                        path=path,
                    )
                aliases[alias] = entry.id
        results.extend(new_results)
        comparisons.extend(_parse_comparisons(path, data))
    _apply_mirrors(checkpoints, aliases, mirrors)
    registry = Registry(checkpoints, tasks, tuple(results), origin, aliases, tuple(comparisons))
    check_references(registry)
    return registry


def check_overlay(path: Path, data: dict, checkpoints: dict[str, Checkpoint], *, known_archs: set[str]) -> None:
    """An overlay must define something, and its checkpoints' architectures must exist in the installed timm.

    Cheap: architectures already used by earlier files pass at once; others are looked up in timm's list of
    names (:func:`medhub._timm_names.timm_model_names`, cached per timm version), never built.

    Raises:
        RegistryError: an empty overlay, or a checkpoint whose ``arch`` timm does not know (naming similar ones).
    """
    if not any(data.get(section) for section in SECTIONS):
        raise RegistryError(f"{path}: this registry overlay defines nothing; add entries under "
                            f"{', '.join(SECTIONS)}, or remove it from MEDHUB_REGISTRY / registry.d", path=path)
    unknown = {entry.id: entry.arch for entry in checkpoints.values() if entry.arch not in known_archs}
    if not unknown:
        return
    from medhub._timm_names import similar_names, timm_model_names

    names = timm_model_names()
    for entry_id, arch in unknown.items():
        if arch not in names:
            close = ", ".join(similar_names(arch, names)) or "none"
            raise RegistryError(f"{path}: checkpoint '{entry_id}' has arch '{arch}', which timm "
                                f"does not know (similar: {close}); fix its arch", path=path)


def _apply_mirrors(
    checkpoints: dict[str, Checkpoint],
    aliases: dict[str, str],
    mirrors: list[tuple[Path, str, tuple[WeightSource, ...]]],
) -> None:
    """Add each overlay's mirror sources to the checkpoint they name (by id or alias), in file order."""
    for path, name, sources in mirrors:
        entry_id = aliases.get(name, name)
        entry = checkpoints.get(entry_id)
        if entry is None:
            logger.warning("%s: mirrors for unknown checkpoint '%s' skipped (not in this medhub's registry)", path, name)
            continue
        checkpoints[entry_id] = entry.model_copy(update={"mirrors": (*entry.mirrors, *sources)})


def fulfils_recipe(existing: Checkpoint | None, new: Checkpoint) -> bool:
    """True when ``new`` brings weights for a checkpoint that so far had only a recipe."""
    return existing is not None and not existing.published and new.published


def check_references(registry: Registry) -> None:
    """Every reported result and comparison names an existing task and known models (or ``random:<arch>``)."""
    for comparison in registry.comparisons:
        label = f"comparison {comparison.model} - {comparison.baseline} on {comparison.task}"
        if comparison.task not in registry.tasks:
            raise RegistryError(f"{label}: task '{comparison.task}' is not registered")
        for model in (comparison.model, comparison.baseline):
            if not model.startswith(RANDOM_PREFIX) and model not in registry.checkpoints:
                raise RegistryError(f"{label}: model '{model}' is not a registered checkpoint")
    for result in registry.results:
        if result.task not in registry.tasks:
            raise RegistryError(f"result {result.model}/{result.task}: task '{result.task}' is not registered")
        if not result.is_baseline and result.model not in registry.checkpoints:
            raise RegistryError(
                f"result {result.model}/{result.task}: model '{result.model}' is not a registered checkpoint"
            )


@functools.lru_cache(maxsize=4)
def _load_cached(stamp: tuple[tuple[str, int], ...]) -> Registry:
    return merge([Path(path) for path, _ in stamp])


def load_registry() -> Registry:
    """The built-in registry merged with the user's overlays, validated once per set of files.

    >>> reg = load_registry()
    >>> reg.get_model("resnet50_imagenet1k").arch
    'resnet50'
    """
    files = [builtin_registry_path(), *overlay_paths()]
    for path in files:
        if not path.is_file():
            raise RegistryError(f"{path}: registry file not found; fix MEDHUB_REGISTRY or reinstall medhub", path=path)
    return _load_cached(tuple((str(p), p.stat().st_mtime_ns) for p in files))


def clear_cache() -> None:
    """Forget the loaded registry (after writing an overlay)."""
    _load_cached.cache_clear()


def write_overlay_entry(entry: Checkpoint, filename: str = "user.yaml") -> Path:
    """Add or replace ``entry`` in the user's overlay file (atomically) so it loads by its id at once.

    The file is ``~/.config/medhub/registry.d/<filename>``. An id that the built-in registry or another
    overlay file already defines is refused (ids are never silently shadowed).
    """
    path = user_overlay_dir() / filename
    write_overlay(path, checkpoints=[entry])
    return path


def write_overlay(
    path: Path,
    *,
    checkpoints: list[Checkpoint] | tuple[Checkpoint, ...] = (),
    mirrors: dict[str, tuple[WeightSource, ...]] | None = None,
    tasks: list[Task] | tuple[Task, ...] = (),
    header: str = "medhub user overlay: entries written by medhub push / medhub adapt",
) -> bool:
    """Add or replace checkpoint entries and mirror lists in the overlay file ``path``, atomically.

    Entries and mirror lists of other ids already in the file are kept. Nothing is written when the file
    would not change, so running the same import twice leaves the file (and its mtime) as it was.

    Args:
        path: the overlay file (created with its folder if missing).
        checkpoints: entries to add or replace (their ids must not be defined by any other registry file,
            except to fulfil a recipe-only entry).
        mirrors: ``{checkpoint id: sources}``; each list replaces the file's list for that id.
        tasks: task entries to add or replace (for tasks the other registry files do not define).
        header: first comment line of the file.

    Returns:
        True when the file was written.

    Raises:
        RegistryError: an id another registry file defines.
    """
    from medhub._io import atomic_write_text

    path = Path(path)
    data = read_yaml(path) if path.exists() else {}
    old_text = path.read_text(encoding="utf-8") if path.exists() else None
    bodies = dict(data.get("checkpoints") or {})
    others = [p for p in [builtin_registry_path(), *overlay_paths()] if p.exists() and p.resolve() != path.resolve()]
    taken = merge(others) if others and checkpoints else None
    for entry in checkpoints:
        clash = taken and (entry.id in taken.checkpoints or entry.id in taken.aliases)
        if clash and not fulfils_recipe(taken.checkpoints.get(entry.id), entry):
            first = taken.origin.get(f"checkpoint:{taken.aliases.get(entry.id, entry.id)}")
            raise RegistryError(
                f"checkpoint id '{entry.id}' is already defined in {first}; choose another id (--id)", path=path
            )
        bodies[entry.id] = entry.model_dump(mode="json", exclude_defaults=True, exclude={"id"})
    data = {"version": 1, **data}
    if bodies:
        data["checkpoints"] = bodies
    if tasks:
        task_bodies = dict(data.get("tasks") or {})
        for task in tasks:
            task_bodies[task.id] = task.model_dump(mode="json", exclude_defaults=True, exclude={"id"})
        data["tasks"] = task_bodies
    if mirrors:
        listed = dict(data.get("mirrors") or {})
        for entry_id, sources in mirrors.items():
            listed[entry_id] = [s.model_dump(mode="json", exclude_none=True) for s in sources]
        data["mirrors"] = listed
    text = f"# {header}\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if text == old_text:
        return False
    atomic_write_text(path, text)
    clear_cache()
    return True
