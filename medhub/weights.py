"""Weights for a registry entry: resolve a source, download and verify it, convert it, cache the result.

Sources are tried in this order, whatever order the registry lists them in: medhub's published Hub repo at
its pinned commit (``medhub_hf``), the timm Hub repo where the weights already live (``timm_hf``), the
original URL (``url``: downloaded with progress, converted with the entry's format, cached as
safetensors), a local file (``local``), and last a ``manual`` note telling the user what to fetch by hand.
Unavailable sources (network, missing file, not cached offline) are skipped; when every one fails, a single
message lists what was tried. Integrity and format errors (sha256 mismatch, unsafe pickle, keys that do not
fit the architecture, a hand-staged Hub cache with a wrong file) stop the search at once: they are never papered over by another source.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medhub import cache
from medhub._io import sha256_file
from medhub.errors import (
    CacheError,
    ChecksumError,
    DownloadError,
    HubError,
    OfflineError,
    WeightsUnavailableError,
)
from medhub.hub import download_url, hf_file, is_offline

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from medhub.schema import Checkpoint, WeightSource

logger = logging.getLogger(__name__)

SOURCE_ORDER = ("medhub_hf", "timm_hf", "url", "local", "manual")
HUB_DEFAULT_FILE = "model.safetensors"
HUB_FALLBACK_FILE = "pytorch_model.bin"
_SKIPPABLE = (HubError, OfflineError, DownloadError, WeightsUnavailableError)


@dataclass
class ResolvedWeights:
    """A converted state dict and where it came from."""

    state_dict: dict[str, torch.Tensor]
    source: str
    path: Path | None = None
    conversion: Any = None  # medhub.convert.ConversionReport, or a dict read back from the cache
    cached: bool = False
    tried: list[str] = field(default_factory=list)


def describe(source: WeightSource, revision: str | None = None) -> str:
    """A short human name for a source: ``medhub_hf org/name@1a2b3c4``, ``url https://…``."""
    if source.kind in ("medhub_hf", "timm_hf"):
        rev = revision or source.revision
        where = f"{source.repo}@{rev[:7] if rev and len(rev) == 40 else rev}" if rev else source.repo
        return f"{source.kind} {where}" + (f"/{source.filename}" if source.filename else "")
    if source.kind in ("url", "local"):
        return f"{source.kind} {source.url or source.filename}"
    return "manual download"


def ordered_sources(entry: Checkpoint) -> list[WeightSource]:
    """The entry's site mirrors first (as listed), then its sources in resolution order (stable within a kind)."""
    return [*entry.mirrors, *sorted(entry.sources, key=lambda s: SOURCE_ORDER.index(s.kind))]


def recipe_error(entry: Checkpoint) -> WeightsUnavailableError:
    """One line for an entry that only has a recipe: the command to run and the nearest published weights."""
    recipe = entry.recipe
    notes = (recipe.notes or "") if recipe else ""
    match = re.search(r"nearest published checkpoints?:\s*(.+?)\.?\s*$", notes, flags=re.I)
    nearest = match.group(1).strip().rstrip(".") if match else ""
    hint = f"; nearest published: {nearest}" if nearest else (f"; {notes}" if notes else "")
    command = recipe.command if recipe else "(no recipe recorded)"
    return WeightsUnavailableError(
        f"'{entry.id}' has no published weights yet; produce them with: {command}{hint}",
        model_id=entry.id,
        recipe=command,
        nearest=[n.strip() for n in nearest.split(",") if n.strip()],
    )


def entry_weights(
    entry: Checkpoint,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    progress: bool = True,
) -> ResolvedWeights:
    """Converted weights for ``entry`` from the first source that works.

    Args:
        entry: the registry entry.
        revision: a Hub revision overriding the pinned one of ``medhub_hf``/``timm_hf`` sources.
        cache_dir: medhub cache root (Hub files go to ``<cache_dir>/huggingface``); default ``$MEDHUB_HOME``.
        local_files_only: cache only (also implied by ``HF_HUB_OFFLINE=1``).
        progress: show download progress.

    Raises:
        WeightsUnavailableError: no source worked online (the message lists each attempt).
        OfflineError: offline, and no source is cached (the message says what to fetch).
        ChecksumError, ConversionError, UnsafeCheckpointError: a source that is wrong, not merely missing.
    """
    if not entry.sources:
        raise recipe_error(entry)
    offline = local_files_only or is_offline()
    tried: list[str] = []
    for source in ordered_sources(entry):
        name = describe(source, revision if source.kind.endswith("_hf") else None)
        try:
            found = _FETCHERS[source.kind](entry, source, revision, cache_dir, offline, progress)
        except CacheError:  # a cache staged by hand with a wrong file: say which, never "not cached"
            raise
        except _SKIPPABLE as exc:
            logger.info("source %s of %s unavailable: %s", name, entry.id, exc)
            tried.append(f"{name}: {'not cached' if isinstance(exc, OfflineError) else exc}")
            continue
        found.tried = tried
        logger.info("weights of %s from %s%s", entry.id, name, " (cache)" if found.cached else "")
        return found
    listing = " | ".join(tried)
    if offline:
        raise OfflineError(
            f"offline and no weights of '{entry.id}' are cached; tried: {listing}. Go online (unset "
            f"HF_HUB_OFFLINE) and run `medhub fetch {entry.id}` once",
            model_id=entry.id,
            tried=tried,
        )
    raise WeightsUnavailableError(
        f"no source of '{entry.id}' could be used; tried: {listing}", model_id=entry.id
    )


# ---- one fetcher per source kind --------------------------------------------------------------------------


def _from_hub(entry, source, revision, cache_dir, offline, progress) -> ResolvedWeights:
    """``medhub_hf`` / ``timm_hf``: one file from the Hub cache or ``HF_ENDPOINT``."""
    rev = revision or source.revision
    names = [source.filename] if source.filename else [HUB_DEFAULT_FILE, HUB_FALLBACK_FILE]
    path = _first_hub_file(source.repo, names, rev, cache.hf_cache_dir(cache_dir), offline)
    if source.sha256:
        _check_hub_file(path, source.sha256, describe(source, rev))
    state_dict, report = _convert(path, source, entry)
    return ResolvedWeights(state_dict, describe(source, rev), path=path, conversion=report)


def _from_url(entry, source, revision, cache_dir, offline, progress) -> ResolvedWeights:
    """``url``: the converted cache, else download + verify + convert + cache."""
    root = cache.cache_root(cache_dir)
    key = cache.source_key(entry.id, source, entry.arch, dict(entry.arch_kwargs))
    converted = cache.converted_path(root, entry.id, key)
    if converted.exists():
        state_dict, meta = cache.load_converted(converted)
        return ResolvedWeights(
            state_dict, describe(source), converted, _cached_report(meta, converted), cached=True
        )
    target = cache.download_path(root, key, source.url)
    if not source.sha256 and not offline:
        logger.warning("the registry records no sha256 for %s: the download cannot be verified", source.url)
    path = download_url(source.url, target, sha256=source.sha256, progress=progress, local_files_only=offline)
    try:
        state_dict, report = _convert(path, source, entry)
    except BaseException:  # an unconvertible or unsafe file is not kept around either
        shutil.rmtree(target.parent, ignore_errors=True)
        raise
    meta = {
        "id": entry.id,
        "url": source.url,
        "sha256": source.sha256 or sha256_file(path),
        "arch": entry.arch,
        "conversion": _as_dict(report),
    }
    cache.save_converted(converted, state_dict, meta)
    shutil.rmtree(target.parent, ignore_errors=True)
    return ResolvedWeights(state_dict, describe(source), converted, report)


def _from_local(entry, source, revision, cache_dir, offline, progress) -> ResolvedWeights:
    """``local``: a file already on disk (verified when a sha256 is recorded)."""
    path = Path(source.filename or source.url or "").expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"local file {path} does not exist", path=path)
    if source.sha256 and sha256_file(path) != source.sha256:
        raise ChecksumError(
            f"{path} has a different sha256 than the registry records ({source.sha256}); replace the file "
            "with the original",
            path=path,
        )
    state_dict, report = _convert(path, source, entry)
    return ResolvedWeights(state_dict, describe(source), path, report)


def _manual(entry, source, revision, cache_dir, offline, progress) -> ResolvedWeights:
    """``manual``: nothing to fetch automatically; say what to do."""
    where = source.url or "the original project"
    notes = f" ({source.notes})" if source.notes else ""
    raise WeightsUnavailableError(
        f"download the file by hand from {where}{notes}, then run "
        f"medhub.load(PATH, arch='{entry.arch}', fmt='{source.format or 'auto'}')"
    )


_FETCHERS = {
    "medhub_hf": _from_hub,
    "timm_hf": _from_hub,
    "url": _from_url,
    "local": _from_local,
    "manual": _manual,
}


def _first_hub_file(repo: str, names: list[str], revision: str | None, cache_dir, offline: bool) -> Path:
    """The first of ``names`` in the repo (like timm: model.safetensors, else the older pytorch_model.bin)."""
    first_error: Exception | None = None
    for name in names:
        try:
            return hf_file(repo, name, revision=revision, cache_dir=cache_dir, local_files_only=offline)
        except CacheError:
            raise
        except (HubError, OfflineError) as exc:
            first_error = first_error or exc
            if isinstance(exc, HubError) and getattr(exc, "reason", None) != "file_not_found":
                raise
    raise first_error


def _check_hub_file(path: Path, expected: str, name: str) -> None:
    """Verify a Hub file against the registry; a mismatch removes it from the Hub cache."""
    actual = sha256_file(path)
    if actual != expected:
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise ChecksumError(
            f"{name} has sha256 {actual}, the registry records {expected}; the file was removed from the "
            "cache. The repo may have been altered: check the pinned revision",
            path=path,
            expected=expected,
            actual=actual,
        )


def _cached_report(meta: dict[str, Any], path: Path) -> Any:
    """The conversion report saved beside cached weights (``None`` when the cache predates reports)."""
    from medhub.convert import ConversionReport

    try:
        report = ConversionReport(**meta["conversion"])
    except (KeyError, TypeError):
        return None
    report.notes = [*report.notes, f"read from the medhub cache: {path}"]
    return report


def _as_dict(report: Any) -> Any:
    return report.to_dict() if hasattr(report, "to_dict") else report


def _convert(path: Path, source: WeightSource, entry: Checkpoint) -> tuple[dict[str, torch.Tensor], Any]:
    """Convert one checkpoint file to the entry's timm keys: ``(state_dict, ConversionReport)``."""
    from medhub.convert import convert_file

    return convert_file(path, fmt=source.format or "auto", arch=entry.arch, **entry.arch_kwargs)
