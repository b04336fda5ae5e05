"""The only module that imports timm: create models, load weights strictly, adapt head and first conv."""

from __future__ import annotations

from medhub.errors import UsageError


def architecture_state_keys(arch: str, **arch_kwargs) -> set[str]:
    """State-dict keys of ``timm.create_model(arch)``, built on the meta device (no memory, no weights)."""
    import timm
    import torch

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        raise UsageError(f"timm has no architecture '{arch}'; similar: {', '.join(close) or 'none'}", arch=arch)
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, **arch_kwargs)
    return set(model.state_dict())
