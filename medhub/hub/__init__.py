"""The seam to the outside world: Hugging Face Hub files, original URLs, and (in ``upload``) publishing.

Only this package imports ``huggingface_hub``. Importing ``medhub.hub`` itself is cheap: the client is
imported inside the functions that need it.
"""

from __future__ import annotations

from medhub.hub.download import download_url, hf_file, hf_snapshot, hub_endpoint, is_offline

__all__ = ["download_url", "hf_file", "hf_snapshot", "hub_endpoint", "is_offline"]
