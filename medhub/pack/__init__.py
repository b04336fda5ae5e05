"""Air-gapped sites: ``medhub pack`` / ``unpack`` / ``mirror`` move checkpoints to machines without internet.

The flow::

    pack:    names ─► resolve (registry id | folder | hf-hub:) ─► licence check (--accept-terms)
                   ─► medhub.load, model.safetensors + config.json + card + registry entry per checkpoint
                   ─► one reproducible tar with manifest.json (medhub.pack.archive)
    unpack:  tar ─► verify every member against the manifest (nothing written before this passes)
                 ─► --cache: files under $MEDHUB_HOME/packs + a local overlay, so medhub.load(ID) works offline
                 ─► --to-store: a repo per checkpoint in a medhub serve store (commit + tag) + a site overlay
    mirror:  registry ids ─► same conversion ─► upload to a site Hub (skipped when unchanged) ─► site overlay

Overlays name the new copies as ``mirrors`` of registry ids (tried before the original sources) and add
full entries for checkpoints the local registry does not know. Research software, not a medical device.
"""

from medhub.pack.install import UnpackResult, unpack
from medhub.pack.mirror import MirrorResult, mirror
from medhub.pack.packing import PackResult, pack

__all__ = ["MirrorResult", "PackResult", "UnpackResult", "mirror", "pack", "unpack"]
