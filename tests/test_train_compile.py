"""The compiled training step (torch.compile, Inductor): the default's choice, fp32 numbers that match eager
training to float noise, and a resume that ends exactly where an uninterrupted compiled run ends."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medhub.data import load_task_data
from medhub.data.cache import cached_split
from medhub.errors import UsageError
from medhub.registry import load_registry
from medhub.train.compiled import choose_compile, compiler_available
from medhub.train.loop import FitConfig, fit
from medhub.train.state import deterministic

CPU = torch.device("cpu")


def test_the_step_is_compiled_only_when_asked(monkeypatch):
    monkeypatch.setattr("medhub.train.compiled.compiler_available", lambda: True)
    default = choose_compile(None)
    assert not default.used and default.why.startswith("default: off")
    assert not choose_compile(False).used
    assert choose_compile(True).used and choose_compile(True).why == "--compile"
    monkeypatch.setattr("medhub.train.compiled.compiler_available", lambda: False)
    assert not choose_compile(None).used  # no compiler needed for the default
    with pytest.raises(UsageError, match="C\\+\\+ compiler"):
        choose_compile(True)


def small_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


class CrashAt:
    """A loader that raises in the middle of epoch ``epoch`` (the run dies after the previous epoch's save)."""

    def __init__(self, loader, epoch: int):
        self.loader, self.epoch, self.sampler = loader, epoch, loader.sampler

    def __iter__(self):
        for number, batch in enumerate(self.loader):
            if self.sampler.epoch == self.epoch and number == 1:
                raise KeyboardInterrupt
            yield batch

    def __len__(self) -> int:
        return len(self.loader)


def breastmnist_splits():
    """BreastMNIST's train and val splits (shipped with medhub) from the decode-once cache, at 28 px."""
    data = load_task_data(load_registry().get_task("breastmnist"))
    return tuple(cached_split("breastmnist", data.split(name), 28, 1, progress=False) for name in ("train", "val"))


def fit_small(train, val, cfg: FitConfig, run_dir, crash: int | None = None, resume: bool = False):
    """:func:`small_network` fitted on ``train`` (batch 100, shuffled, seed 1; BreastMNIST's 546 images leave a
    last batch of 46), one thread, deterministic; ``crash``: the epoch in which the loader raises mid-way."""
    from medhub.cpu import torch_threads
    from medhub.data.loader import make_loader

    model = small_network()
    loader = make_loader(train, batch_size=100, shuffle=True, seed=1)
    with torch_threads(1), deterministic(CPU, 1):
        result = fit(model, CrashAt(loader, crash) if crash is not None else loader,
                     make_loader(val, batch_size=100, shuffle=False), cfg, run_dir, CPU, progress=False,
                     resume=resume)
    return model, result


@pytest.mark.skipif(not compiler_available(), reason="torch.compile needs a C++ compiler")
def test_compiled_fit_resumes_exactly_and_matches_eager(tmp_path):
    train, val = breastmnist_splits()
    config = FitConfig(task_type="binary", label_names=("malignant", "benign"), loss="cross_entropy", lr=1e-3,
                       epochs=3, channels=1, normalization="half", seed=1, compile=True)

    def run(name: str, cfg: FitConfig, crash: int | None = None, resume: bool = False):
        return fit_small(train, val, cfg, tmp_path / name, crash=crash, resume=resume)

    with torch.inference_mode(False):
        full_model, full = run("full", config)
        with pytest.raises(KeyboardInterrupt):
            run("cut", config, crash=2)
        # resuming with compile=False in the config: the saved run's choice (compiled) wins
        resumed_model, resumed = run("cut", FitConfig(**{**config.__dict__, "compile": False}), resume=True)
        eager_model, eager = run("eager", FitConfig(**{**config.__dict__, "compile": False}))
    assert full.compiled and resumed.compiled and not eager.compiled
    assert full.first_step_s is not None and full.first_step_s > 0
    assert resumed.resumed_from == 2
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    for name, value in full_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], value), name
        # compiled kernels sum in another order than eager ones: the same training up to float noise
        assert torch.allclose(eager_model.state_dict()[name].float(), value.float(), rtol=1e-3, atol=1e-4), name
    assert [round(h["train_loss"], 4) for h in eager.history] == [round(h["train_loss"], 4) for h in full.history]


def test_reproduce_records_the_choice(tmp_path):
    from medhub.reproduce import reproduce

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = reproduce("random:test_resnet", "breastmnist", epochs=1, label_fraction=0.5, out=tmp_path / "r",
                           progress=False)
        cifar = reproduce("random:resnet18", "breastmnist", epochs=1, label_fraction=0.1, out=tmp_path / "c",
                          progress=False, compile_model=False, precision="bf16")
    finally:
        torch.set_num_threads(threads)
    record = report["runs"][0]["input"]["compile"]
    assert record["used"] is False and record["why"].startswith("default: off") and record["first_step_s"] > 0
    assert cifar["runs"][0]["input"]["compile"]["why"] == "--no-compile"
    # --precision bf16 trains in bf16 on a CPU too (CPU autocast), and result.json says what ran
    assert report["runs"][0]["input"]["precision"] == "fp32" and cifar["runs"][0]["input"]["precision"] == "bf16"
    if __import__("platform").libc_ver()[0] == "glibc":  # medhub.cpu.keep_heap_memory, for CPU runs
        assert report["runs"][0]["input"]["allocator"].startswith(("glibc: freed memory kept", "default (MEDHUB"))
    # the memory format follows the stem on a CPU (channels_last_for): NHWC for MedMNIST's CIFAR-stem ResNet-18
    assert report["protocol"]["stem"] is None and report["runs"][0]["input"]["channels_last"] is False
    assert cifar["protocol"]["stem"] == "cifar" and cifar["runs"][0]["input"]["channels_last"] is True


def test_channels_last_is_chosen_where_it_was_measured_to_pay():
    from medhub.train.runner import channels_last_for

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert channels_last_for(cpu, "cifar", False) is True
    assert channels_last_for(cpu, None, False) is False  # timm stems on a CPU: not measured, default format
    assert channels_last_for(cpu, "cifar", True) is False
    assert channels_last_for(cuda, None, False) is True and channels_last_for(cuda, None, True) is True


def test_a_failing_compiler_falls_back_to_eager_training(tmp_path, monkeypatch):
    """No working C++ compiler at run time: the first compiled step fails before updating anything, and the
    run trains eagerly to the eager run's exact weights, recording why."""
    import torch._inductor.config as inductor

    from medhub.data.loader import make_loader

    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/g++",))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing compiled before
    torch._dynamo.reset()
    data = load_task_data(load_registry().get_task("breastmnist"))
    train = cached_split("breastmnist", data.split("train"), 28, 1, progress=False)
    config = FitConfig(task_type="binary", label_names=("malignant", "benign"), loss="cross_entropy", lr=1e-3,
                       epochs=2, channels=1, normalization="half", seed=1, compile=True)
    results = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, cfg in (("failed", config), ("eager", FitConfig(**{**config.__dict__, "compile": False}))):
            model = small_network()
            with deterministic(CPU, 1):
                outcome = fit(model, make_loader(train, batch_size=100, shuffle=True, seed=1),
                              make_loader(train, batch_size=100, shuffle=False), cfg, tmp_path / name, CPU,
                              progress=False)
            results[name] = (model, outcome)
    finally:
        torch.set_num_threads(threads)
        torch._dynamo.reset()
    failed, eager = results["failed"][1], results["eager"][1]
    assert failed.compiled is False and "compiler" in failed.compile_failed.lower()
    for name, value in results["eager"][0].state_dict().items():
        assert torch.equal(results["failed"][0].state_dict()[name], value), name
    assert [h["train_loss"] for h in failed.history] == [h["train_loss"] for h in eager.history]


def test_a_resumed_run_keeps_the_saved_runs_precision(tmp_path):
    """A CPU ``--precision bf16`` run saved before 2026-12-01 ran fp32 (its state has no precision): resumed
    now, it goes on in fp32 and ends with the weights and history of an uninterrupted fp32 run, and says so."""
    from medhub.train.state import STATE_FILE

    train, val = breastmnist_splits()
    fp32 = FitConfig(task_type="binary", label_names=("malignant", "benign"), loss="cross_entropy", lr=1e-3,
                     epochs=2, channels=1, normalization="half", seed=1)
    bf16 = FitConfig(**{**fp32.__dict__, "precision": "bf16"})

    def run(name: str, cfg: FitConfig, crash: int | None = None, resume: bool = False):
        return fit_small(train, val, cfg, tmp_path / name, crash=crash, resume=resume)

    with torch.inference_mode(False):
        full_model, full = run("fp32", fp32)
        with pytest.raises(KeyboardInterrupt):
            run("old", fp32, crash=1)  # what the old code ran for --precision bf16 on a CPU
        state_path = tmp_path / "old" / STATE_FILE
        state = torch.load(state_path, weights_only=True)
        assert state.pop("precision") == "fp32"  # saved now; a state from before had no such entry
        torch.save(state, state_path)
        resumed_model, resumed = run("old", bf16, resume=True)
        _, now = run("bf16", bf16)
    assert (full.precision, resumed.precision, now.precision) == ("fp32", "fp32", "bf16")
    assert resumed.resumed_from == 1
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    for name, value in full_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], value), name
    assert torch.load(tmp_path / "bf16" / STATE_FILE, weights_only=True)["precision"] == "bf16"
