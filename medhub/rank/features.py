"""Frozen penultimate features of a checkpoint on a stratified sample of a task's training split, cached.

Flow per candidate::

    sample (stratified, seeded) ─► decode-once cache (medhub.data.cache) ─► the checkpoint's own input
    (its channels; the recipe's normalization, size and crop: what fine-tuning feeds it) ─► timm forward_features
    ─► forward_head(pre_logits=True) = features (N, D) [+ the source head's logits (N, Z) when it has one]

Features are stored under ``$MEDHUB_HOME/rank/features/<key>.npz`` (plain arrays, loaded with
``allow_pickle=False``) plus a JSON sidecar; the key hashes (checkpoint identity, data fingerprint,
preprocessing, extraction version), so re-scoring the same candidates is instant and anything that changes
the features changes the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medhub._io import atomic_write_text
from medhub.errors import UsageError

log = logging.getLogger(__name__)
FEATURE_VERSION = 2  # bump when extraction changes what it returns
RANDOM_SEED = 0  # random: baselines are initialised with this seed, so their features are reproducible


@dataclass
class Features:
    """One candidate's features on the sample.

    Attributes:
        features: (N, D) float32 penultimate features.
        logits: (N, Z) float32 outputs of the checkpoint's own classifier, or None without one.
        seconds: wall time of loading the checkpoint and extracting (when computed, not when read back).
        cached: True when read from the feature cache.
        key: the cache key.
    """

    features: np.ndarray
    logits: np.ndarray | None
    seconds: float
    cached: bool
    key: str

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.features.shape[1])


def stratified_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` samples drawn without replacement, stratified by class.

    Single-label (N,): each class gets its share of ``n`` (largest remainders), at least one per class while
    ``n`` allows. Multi-label (N, L): strata are each sample's rarest positive label (or "none"), so rare
    findings keep their share. ``n >= N`` returns every index.
    """
    labels = np.asarray(labels)
    total = len(labels)
    if n >= total:
        return np.arange(total)
    if labels.ndim == 2 and labels.shape[1] > 1:
        hard = labels >= 0.5
        frequency = hard.sum(axis=0)
        rarity = np.where(hard, frequency[None, :], np.iinfo(np.int64).max)
        strata = np.where(hard.any(axis=1), rarity.argmin(axis=1), -1)
    else:
        strata = labels.reshape(-1)
    groups, counts = np.unique(strata, return_counts=True)
    quota = counts * n / total
    take = np.minimum(np.maximum(np.floor(quota).astype(int), 1 if n >= len(groups) else 0), counts)
    for g in np.argsort(-(quota - np.floor(quota))):  # largest remainders fill up to n
        if take.sum() >= n:
            break
        if take[g] < counts[g]:
            take[g] += 1
    while take.sum() > n:  # the one-per-class floor may overshoot
        take[np.argmax(take)] -= 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(strata == g))[:k] for g, k in zip(groups, take, strict=True)]
    return np.sort(np.concatenate(picked))


def checkpoint_identity(model: str, arch: str | None) -> dict:
    """What names the weights of ``model``: registry entry, file stats of local weights, Hub revision, or arch.

    Raises:
        UsageError: a path that does not exist; a file without ``arch``.
        UnknownModelError: an id that no registry file defines.
    """
    from medhub.loader import HF_PREFIX
    from medhub.schema import RANDOM_PREFIX

    if model.startswith(RANDOM_PREFIX):
        import timm

        return {"random": model[len(RANDOM_PREFIX):], "seed": RANDOM_SEED, "timm": timm.__version__}
    if model.startswith(HF_PREFIX):
        return {"hub": model}
    path = Path(model).expanduser()
    if path.exists():
        if path.is_file() and not arch:
            raise UsageError(f"{model} is a bare checkpoint file: pass --arch <timm architecture>")
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        return {"path": str(path.resolve()), "arch": arch,
                "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}
    from medhub.registry import load_registry

    entry = load_registry().get_model(model)
    local = [Path(s.filename).expanduser() for s in entry.sources if s.kind == "local" and s.filename]
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in local if p.is_file()]
    return {"entry": entry.model_dump(mode="json"), "local_files": stats}


def cache_dir() -> Path:
    """``$MEDHUB_HOME/rank/features`` (safe to delete; refilled on demand)."""
    from medhub.data.paths import medhub_home

    return medhub_home() / "rank" / "features"


def feature_key(identity: dict, data_fingerprint: str, preprocessing: dict) -> str:
    """Hex digest naming one cached feature file."""
    text = json.dumps([FEATURE_VERSION, identity, data_fingerprint, preprocessing], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def read_cached(key: str) -> Features | None:
    """The cached features for ``key``, or None (missing or unreadable files are recomputed)."""
    folder = cache_dir()
    try:
        meta = json.loads((folder / f"{key}.json").read_text())
        with np.load(folder / f"{key}.npz", allow_pickle=False) as arrays:
            features = arrays["features"]
            logits = arrays["logits"] if "logits" in arrays.files else None
    except (OSError, ValueError, KeyError):
        return None
    return Features(features, logits, float(meta.get("seconds", 0.0)), True, key)


def write_cached(result: Features, meta: dict) -> None:
    """Store features atomically: the .npz is renamed into place before its JSON sidecar is written."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"features": result.features}
    if result.logits is not None:
        arrays["logits"] = result.logits
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{result.key}.", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(tmp, folder / f"{result.key}.npz")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    atomic_write_text(folder / f"{result.key}.json", json.dumps({**meta, "seconds": result.seconds}, indent=1))


def build_frozen(model: str, *, arch: str | None, data_channels: int):
    """The candidate network in eval mode with its own head (none for ``random:`` baselines).

    ``random:<arch>`` is built head-less with the data's channels and seed :data:`RANDOM_SEED`; anything else
    goes through :func:`medhub.load` with the checkpoint's own head and input channels, as fine-tuning does.
    """
    import torch

    from medhub.train.network import build_network, is_random

    if is_random(model):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            network = build_network(model, num_outputs=0, in_chans=data_channels)
    else:
        import medhub

        network = medhub.load(model, arch=arch)
    if not (hasattr(network, "forward_features") and hasattr(network, "forward_head")):
        raise UsageError(f"{model}: not a timm classification network (no forward_features/forward_head)")
    return network.eval()


def input_settings(network, model: str, plan) -> dict:
    """The input this checkpoint gets when ``medhub reproduce`` fine-tunes it on the task: its own input
    channels (first conv; gray images are repeated to 3), the recipe's normalization (``plan.normalization``,
    which fine-tuning applies to every initialisation: ImageNet mean/std for the benchmark's tasks, 0.5/0.5
    for MedMNIST's), and the protocol's size and crop."""
    import torch

    first = next((m for m in network.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return {"channels": first.in_channels if first is not None else 3, "normalization": plan.normalization,
            "img_size": plan.img_size, "cache_size": plan.cache_size, "center_crop": plan.center_crop}


def extract(network, images: np.ndarray, settings: dict, *, device, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(features (N, D), logits (N, Z) or None)`` of uint8 ``images`` (N, C, S, S), no gradients.

    Features are timm's ``forward_head(forward_features(x), pre_logits=True)``: the pooled (and, for ViTs,
    normed) representation the classifier reads; logits are ``forward_head(...)`` when a head exists.
    """
    import torch
    from torchvision.transforms import v2

    from medhub.data.loader import to_model_input

    normalization = settings["normalization"]
    normalization = tuple(tuple(v) for v in normalization) if isinstance(normalization, list) else normalization
    has_head = int(getattr(network, "num_classes", 0) or 0) > 0
    network = network.to(device)
    features, logits = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.array(images[start:start + batch_size]))
            if settings.get("center_crop"):
                batch = v2.functional.center_crop(batch, [settings["center_crop"]] * 2)
            x = to_model_input(batch, device, settings["channels"], normalization)
            trunk = network.forward_features(x)
            features.append(network.forward_head(trunk, pre_logits=True).float().flatten(1).cpu().numpy())
            if has_head:
                logits.append(network.forward_head(trunk).float().reshape(len(x), -1).cpu().numpy())
    return np.concatenate(features), (np.concatenate(logits) if has_head else None)


def candidate_features(model: str, *, arch: str | None, images: np.ndarray, channels: int, data_fingerprint: str,
                       plan, device, batch_size: int, refresh: bool = False) -> Features:
    """Features of ``model`` on ``images`` (N, C, S, S) uint8 with ``channels`` data channels, from the cache
    when its key matches, else extracted and cached.

    Raises:
        MedhubError subclasses from loading (unknown id, missing weights, bad file), :class:`UsageError`.
    """
    identity = checkpoint_identity(model, arch)
    preprocessing_guess = _preprocessing_for_key(model, plan, identity)
    key = feature_key(identity, data_fingerprint, preprocessing_guess)
    if not refresh:
        cached = read_cached(key)
        if cached is not None and len(cached.features) == len(images):
            return cached
    started = time.perf_counter()
    network = build_frozen(model, arch=arch, data_channels=channels)
    settings = input_settings(network, model, plan)
    feats, logits = extract(network, images, settings, device=device, batch_size=batch_size)
    if not np.all(np.isfinite(feats)):
        raise UsageError(f"{model}: its features hold NaN or inf on this data; check the checkpoint")
    result = Features(feats.astype(np.float32), None if logits is None else logits.astype(np.float32),
                      time.perf_counter() - started, False, key)
    write_cached(result, {"model": model, "arch": arch, "preprocessing": settings, "dim": result.dim,
                          "n": len(images), "data_fingerprint": data_fingerprint})
    return result


def _preprocessing_for_key(model: str, plan, identity: dict) -> dict:
    """What decides the input pixels besides the checkpoint: the plan's sizes, crop and normalization."""
    return {"img_size": plan.img_size, "cache_size": plan.cache_size, "center_crop": plan.center_crop,
            "normalization": plan.normalization, "random": model.startswith("random:")}
