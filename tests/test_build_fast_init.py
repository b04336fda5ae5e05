"""create_model with weights skips timm's overwritten random init (medhub._fastinit), without changing results.

Real timm models throughout. "Old path" is ``create_model(..., fast_init=False)``: the ordinary timm build
followed by ``load_state_dict``.
"""

from __future__ import annotations

import logging
import math

import pytest
import timm
import torch

from medhub import _fastinit
from medhub.build import create_model

torch.set_num_threads(1)

FALLBACK = "fast init not used"
# Registry families, with the arch_kwargs the registry uses where they change buffers or the head.
LOADED = [
    ("resnet50", {}),
    ("densenet121", {}),
    ("convnext_tiny", {}),
    ("vit_small_patch16_224", {}),
    ("vit_base_patch16_224", {}),
    ("deit_tiny_patch16_224", {}),
    ("swin_tiny_patch4_window7_224", {}),  # relative_position_index, attn_mask: non-persistent
    ("swin_base_patch4_window7_224", {"img_size": 192, "window_size": 6}),  # SimMIM native geometry
    ("beit_base_patch16_224", {"use_abs_pos_emb": False, "use_rel_pos_bias": True, "global_pool": "avg"}),
]


def _source(arch: str, seed: int = 0, **kwargs) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A normally built model's state dict and its non-persistent buffers."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, **kwargs)
    persistent = set(model.state_dict())
    buffers = {k: v.clone() for k, v in model.named_buffers() if k not in persistent}
    return model.state_dict(), buffers


def _fallbacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if FALLBACK in r.getMessage()]


@pytest.mark.parametrize(("arch", "kwargs"), LOADED, ids=[a for a, _ in LOADED])
def test_loaded_model_is_bit_identical_to_the_old_path(arch, kwargs, caplog):
    caplog.set_level(logging.DEBUG, logger="medhub._fastinit")
    state, computed = _source(arch, **kwargs)
    new, report = create_model(arch, state, **kwargs)
    assert not _fallbacks(caplog), "the fast path was not taken"
    old, old_report = create_model(arch, state, fast_init=False, **kwargs)
    assert report.to_dict() == old_report.to_dict()
    assert all(torch.equal(v, state[k]) for k, v in new.state_dict().items())
    new_buffers = dict(new.named_buffers())
    assert bool(computed) == (arch.startswith(("swin", "beit")))  # the archs with computed buffers
    for key, value in computed.items():  # not in the state dict: recomputed, equal to a normal build
        assert new_buffers[key].dtype == value.dtype and torch.equal(new_buffers[key], value), key
    side = kwargs.get("img_size", new.pretrained_cfg["input_size"][-1])
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(new(x), old(x))
    assert not new.training and not any(p.is_meta for p in new.parameters())


def _ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov distance between the value distributions of ``a`` and ``b``."""
    a, b = a.flatten().double().sort().values, b.flatten().double().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True) / a.numel()
    cdf_b = torch.searchsorted(b, grid, right=True) / b.numel()
    return float((cdf_a - cdf_b).abs().max())


def _same_distribution(ours: torch.Tensor, timms: torch.Tensor) -> None:
    assert torch.isfinite(ours).all()
    if not timms.any():  # timm zero-initialises it (bias, or a zero head)
        assert not ours.any()
        return
    n, m = ours.numel(), timms.numel()
    assert _ks_statistic(ours, timms) < 1.95 * math.sqrt((n + m) / (n * m))  # KS test at alpha 0.001
    assert ours.std().item() == pytest.approx(timms.std().item(), rel=0.25 if n < 1000 else 0.03)


# resnet/densenet: torch Linear init (uniform; densenet zero bias); vit/swin/convnext: trunc_normal 0.02 and
# zero bias; beit: trunc_normal 0.02 scaled by head_init_scale 0.001.
HEADS = [
    ("resnet50", "fc", {}),
    ("densenet121", "classifier", {}),
    ("convnext_tiny", "head.fc", {}),
    ("vit_small_patch16_224", "head", {}),
    ("swin_tiny_patch4_window7_224", "head.fc", {}),
    ("beit_base_patch16_224", "head", {"use_abs_pos_emb": False, "use_rel_pos_bias": True}),
]


@pytest.mark.parametrize(("arch", "head", "kwargs"), HEADS, ids=[a for a, _, _ in HEADS])
def test_a_fresh_head_gets_timms_init_for_the_arch(arch, head, kwargs, caplog):
    caplog.set_level(logging.DEBUG, logger="medhub._fastinit")
    state, _ = _source(arch, **kwargs)
    torch.manual_seed(3)
    model, report = create_model(arch, state, num_classes=64, **kwargs)
    assert not _fallbacks(caplog)
    assert sorted(report.missing) == [f"{head}.bias", f"{head}.weight"]
    torch.manual_seed(4)
    timms = timm.create_model(arch, num_classes=64, **kwargs).get_submodule(head)
    ours = model.get_submodule(head)
    _same_distribution(ours.weight.detach(), timms.weight.detach())
    _same_distribution(ours.bias.detach(), timms.bias.detach())
    loaded = {k: v for k, v in model.state_dict().items() if not k.startswith(f"{head}.")}
    assert all(torch.equal(v, state[k]) for k, v in loaded.items())
    # Not leftover memory: the same seed gives the same head, another seed another head.
    torch.manual_seed(3)
    again = create_model(arch, state, num_classes=64, **kwargs)[0].get_submodule(head)
    assert torch.equal(again.weight, ours.weight) and torch.equal(again.bias, ours.bias)
    torch.manual_seed(5)
    other = create_model(arch, state, num_classes=64, **kwargs)[0].get_submodule(head)
    assert not torch.equal(other.weight, ours.weight)


def test_fresh_fc_norm_and_adapted_first_conv(caplog):
    caplog.set_level(logging.DEBUG, logger="medhub._fastinit")
    arch, kwargs = "vit_small_patch16_224", {"global_pool": "avg"}
    state, _ = _source(arch, **kwargs)
    state = {k: v for k, v in state.items() if not k.startswith("fc_norm.")}  # a token-pooled source
    new, report = create_model(arch, state, num_classes=3, in_chans=1, **kwargs)
    assert not _fallbacks(caplog)
    old, old_report = create_model(arch, state, num_classes=3, in_chans=1, fast_init=False, **kwargs)
    assert (
        report.missing == old_report.missing == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    )
    assert torch.equal(new.fc_norm.weight, torch.ones(384)) and torch.equal(
        new.fc_norm.bias, torch.zeros(384)
    )
    old_state = old.state_dict()
    assert all(torch.equal(v, old_state[k]) for k, v in new.state_dict().items() if not k.startswith("head."))
    assert new.patch_embed.proj.weight.shape[1] == 1


@pytest.mark.parametrize("arch", ["resnet50", "vit_small_patch16_224"])
def test_untrained_model_is_timms_random_init_unchanged(arch):
    torch.manual_seed(7)
    ours, report = create_model(arch, None, num_classes=5)
    torch.manual_seed(7)
    timms = timm.create_model(arch, num_classes=5).state_dict()
    assert report.missing == [] and ours.state_dict().keys() == timms.keys()
    assert all(torch.equal(v, timms[k]) for k, v in ours.state_dict().items())


def test_a_fresh_tensor_the_recipe_cannot_replay_falls_back_to_the_ordinary_build(caplog):
    # ConvNeXt's layer scale is `ls_init_value * torch.ones(...)`: derived from another tensor, not replayable.
    caplog.set_level(logging.DEBUG, logger="medhub._fastinit")
    state, _ = _source("test_convnext")
    state = {k: v for k, v in state.items() if not k.startswith("stages.3.")}
    model, report = create_model("test_convnext", state, num_classes=1000, classifier="stages.3")
    assert _fallbacks(caplog)
    assert "stages.3.blocks.0.gamma" in report.missing
    reference = timm.create_model("test_convnext")
    assert torch.equal(model.stages[3].blocks[0].gamma, reference.stages[3].blocks[0].gamma)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if k in state)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()


def _with_plain_buffer() -> torch.nn.Module:
    model = timm.create_model("test_resnet")
    model.register_buffer("grid", torch.arange(4.0), persistent=False)  # no init_non_persistent_buffers
    return model


def _with_tensor_attribute() -> torch.nn.Module:
    model = timm.create_model("test_resnet")
    model.scale = torch.ones(3)  # neither a parameter nor a buffer: to_empty would leave it on meta
    return model


@pytest.mark.parametrize("create", [_with_plain_buffer, _with_tensor_attribute])
def test_models_that_cannot_be_materialised_are_refused(create):
    assert _fastinit.build_on_meta(create) is None
    assert _fastinit.build_on_meta(lambda: timm.create_model("test_resnet")) is not None
