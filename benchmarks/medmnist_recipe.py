"""Benchmark: MedMNIST v2's published 28 px recipe, medhub's trainer versus the reference pipeline.

Both sides train MedMNIST v2's CIFAR-style ResNet-18 (3x3 stride-1 first conv, no max-pool) on the same
PneumoniaMNIST ``.npz`` (train split, the first ``--batches`` x 128 images) with the same schedule: Adam
(lr 1e-3, the task protocol's), batch 128, shuffled, cross-entropy, fp32, the same number of steps per round,
the same torch thread count (``--threads``, default 1: steadier on a shared machine). With ``--own-threads``
each side runs as it would by default instead: the reference with torch's default (one thread per core),
medhub with :func:`medhub.cpu.choose_threads` (the cores nobody else is using), chosen once at the start.

* reference (written here after the MedMNIST experiments' pipeline, not copied): the pip-installed
  ``medmnist`` package's dataset class (``medmnist.PneumoniaMNIST(split="train", root=<folder>)``, read
  offline from the local ``.npz``) with per-image ``ToTensor()`` + ``Normalize([0.5], [0.5])`` in a torch
  ``DataLoader`` (batch 128, shuffle, no workers); a ResNet-18 written out below in plain torch (BasicBlocks,
  1x1 projection shortcuts); a plain loop: ``zero_grad``, forward, loss, ``backward``, ``step``.
* medhub: what ``medhub reproduce random:resnet18 pneumoniamnist --cifar-stem`` runs: the network from
  :func:`medhub.train.network.build_network`, the split from the decode-once cache
  (:func:`medhub.data.cache.cached_split`) through :func:`medhub.data.loader.make_loader`, and
  :func:`medhub.train.loop.train_epoch` in channels-last format (:func:`medhub.train.runner.channels_last_for`),
  fp32, the step eager (the default since 2026-12-01, :mod:`medhub.train.compiled`).
* ``--compile``: a side with the step through ``torch.compile`` (what ``reproduce --compile`` runs); its cold
  warm-up (the first step, into a fresh Inductor cache) is timed on its own, with the steps it takes to repay.
* ``--bf16``: a side with CPU bf16 autocast (what ``reproduce --precision bf16`` runs: not the released code's
  arithmetic, so such a run is "not comparable"; it shows what the CPU's bf16 instructions give).

Before timing, the benchmark checks that the two networks are the same: equal parameter counts, and equal
outputs (eval mode, to 1e-5) once the reference network holds medhub's weights. Rounds alternate the order of
the sides (A,B,C / C,B,A ...); ``ratio`` is the median over rounds of reference seconds / medhub seconds for
the same images, i.e. medhub's images/s over the reference's. Goal: >= 1.5 in fp32.

``fp32_ceiling`` bounds what any fp32 pipeline can reach on this CPU with these convolution kernels (oneDNN's,
which both sides call): each of the network's 20 convolutions timed alone, forward + backward at the step's
shapes, in whichever memory format is faster for it; their sum is a floor under any fp32 step, even with the
data, BatchNorm, ReLU, additions and optimizer free. ``max_ratio`` is the reference's step time over that
floor: a goal above it cannot be met in fp32 on this machine. Last stdout line: JSON.

    python benchmarks/medmnist_recipe.py --quick
    python benchmarks/medmnist_recipe.py --batches 3 --repeats 5 --threads 2 --bf16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    emit,
    interleaved,
    machine,
    median,
    note,
    paired_ratio,
    parser,
    setup_torch,
    summary,
    timed,
)

SHARED = Path(os.environ.get("MEDHUB_SHARED", Path(__file__).resolve().parents[2] / "shared"))  # as tests/conftest
EMBEDDED = Path(__file__).resolve().parents[1] / "medhub" / "_data" / "medmnist"
TASK = "pneumoniamnist"
LR = 1e-3  # the task protocol's (MedMNIST experiments' default)


def data_folder() -> Path:
    """A folder holding ``pneumoniamnist.npz``: the shared real-data copy, else the one shipped with medhub."""
    for folder in (SHARED / "data" / TASK, EMBEDDED):
        if (folder / f"{TASK}.npz").is_file():
            return folder
    raise SystemExit(f"no {TASK}.npz under {SHARED / 'data' / TASK} or {EMBEDDED}")


def reference_network(in_channels: int, num_classes: int):
    """MedMNIST v2's 28 px ResNet-18 in plain torch: CIFAR stem, four stages of two BasicBlocks, linear head."""
    from torch import nn
    from torch.nn import functional as F

    class BasicBlock(nn.Module):
        def __init__(self, planes_in: int, planes: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(planes_in, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.shortcut = nn.Sequential()
            if stride != 1 or planes_in != planes:
                self.shortcut = nn.Sequential(nn.Conv2d(planes_in, planes, 1, stride, bias=False),
                                              nn.BatchNorm2d(planes))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            stages, planes_in = [], 64
            for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                stages.append(nn.Sequential(BasicBlock(planes_in, planes, stride), BasicBlock(planes, planes, 1)))
                planes_in = planes
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.linear = nn.Linear(512, num_classes)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
            out = F.adaptive_avg_pool2d(out, 1).flatten(1)
            return self.linear(out)

    return ResNet18()


def copy_weights(source, target) -> None:
    """Load ``source``'s state into ``target`` by position (both list the same tensors in the same order)."""
    src, dst = source.state_dict(), target.state_dict()
    if len(src) != len(dst):
        raise SystemExit(f"the networks differ: {len(src)} vs {len(dst)} tensors")
    for (name_a, a), (name_b, b) in zip(src.items(), dst.items(), strict=True):
        if a.shape != b.shape:
            raise SystemExit(f"the networks differ: {name_a} {tuple(a.shape)} vs {name_b} {tuple(b.shape)}")
    target.load_state_dict({name: tensor.clone() for name, tensor in zip(dst, src.values(), strict=True)})


def same_network(medhub_net, reference_net, images) -> dict:
    """Parameter counts and the largest output difference (eval mode) for the same weights and input."""
    import torch

    copy_weights(medhub_net, reference_net)
    medhub_net.eval()
    reference_net.eval()
    with torch.no_grad():
        difference = float((medhub_net(images) - reference_net(images)).abs().max())
    medhub_net.train()
    reference_net.train()
    counts = [sum(p.numel() for p in net.parameters()) for net in (medhub_net, reference_net)]
    if counts[0] != counts[1] or difference > 1e-5:
        raise SystemExit(f"the networks differ: {counts[0]} vs {counts[1]} parameters, outputs by {difference}")
    return {"parameters": counts[0], "max_output_difference": difference}


def reference_side(network, folder: Path, count: int, batch_size: int):
    """One round of the reference pipeline over the first ``count`` training images."""
    import medmnist
    import torch
    from torch.nn import functional as F
    from torchvision import transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=[0.5], std=[0.5])])
    dataset = medmnist.PneumoniaMNIST(split="train", transform=transform, root=str(folder))
    subset = torch.utils.data.Subset(dataset, range(count))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=LR)

    def run() -> None:
        network.train()
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(network(inputs), targets.squeeze(1).long())
            loss.backward()
            optimizer.step()

    return run


def medhub_side(network, cached, batch_size: int, compiled, channels_last: bool = False, precision: str = "fp32"):
    """One round of medhub's trainer (:func:`medhub.train.loop.train_epoch`) over the cached split; the input in
    channels-last format when the network is (as ``reproduce`` trains this network on a CPU)."""
    import torch

    from medhub.data.loader import make_loader, set_epoch
    from medhub.train.loop import FitConfig, make_optimizer, train_epoch

    config = FitConfig(task_type="binary", label_names=("normal", "pneumonia"), loss="cross_entropy", lr=LR,
                       channels=1, normalization="half", compile=compiled is not None, channels_last=channels_last,
                       precision=precision)
    optimizer = make_optimizer(network.parameters(), config)
    loader = make_loader(cached, batch_size=batch_size, shuffle=True, seed=0)
    rounds = [0]

    def run() -> None:
        set_epoch(loader, rounds[0])
        rounds[0] += 1
        train_epoch(network, loader, optimizer, torch.device("cpu"), config, progress=False, desc="", compiled=compiled)

    return run


def conv_seconds(conv, shape: tuple[int, ...], channels_last: bool, input_grad: bool) -> float:
    """Median seconds of one forward + backward of ``conv`` alone on a random input of ``shape`` (3 runs after
    a warm-up), in channels-last or the default format; ``input_grad``: the backward computes the input's
    gradient too (every convolution but the first)."""
    import copy

    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = copy.deepcopy(conv).to(memory_format=fmt)
    x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_(input_grad)
    grad = None

    def run() -> None:
        nonlocal grad
        out = conv(x)
        if grad is None:
            grad = torch.randn_like(out)
        out.backward(grad)

    run()
    return median([timed(run) for _ in range(3)])


def fp32_ceiling(network, inputs, threads: int, reference_step_s: float) -> dict:
    """The fastest step any fp32 pipeline could take with this CPU's convolution kernels (see the module doc).

    ``network``: the channels-last network; ``inputs``: one batch, float, channels-last. Each convolution of
    the network is timed alone (forward + backward, in whichever memory format is faster for it); their sum
    is a floor no fp32 step with these kernels can go under, even with every other operator free.
    """
    import torch
    from torch.nn import functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from medhub.cpu import torch_threads

    shapes = {}

    def record(module, args, output) -> None:
        shapes[module] = tuple(args[0].shape)

    hooks = [module.register_forward_hook(record) for module in network.modules() if isinstance(module, torch.nn.Conv2d)]
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(network(inputs), torch.zeros(len(inputs), dtype=torch.long)).backward()
    for hook in hooks:
        hook.remove()
    network.zero_grad(set_to_none=True)
    floor_s, formats = 0.0, {"channels_last": 0, "default": 0}
    with torch_threads(threads):
        for index, (conv, shape) in enumerate(shapes.items()):
            timings = {fmt: conv_seconds(conv, shape, fmt == "channels_last", index > 0) for fmt in formats}
            best = min(timings, key=timings.get)
            formats[best] += 1
            floor_s += timings[best]
    step_flops = counter.get_total_flops()
    return {"step_gflop": round(step_flops / 1e9, 1), "convolutions": len(shapes), "faster_format": formats,
            "conv_floor_s": round(floor_s, 3), "conv_gflops_at_floor": round(step_flops / floor_s / 1e9, 1),
            "reference_step_s": round(reference_step_s, 3), "max_ratio": round(reference_step_s / floor_s, 2)}


ENVIRONMENT = dict(os.environ)  # before medhub is imported (it sets OMP_WAIT_POLICY): what a plain script gets


def worker(args) -> int:
    """One side in its own process: set up, then answer each ``run`` line on stdin with one timed round's
    ``done`` (the parent times the round trip). The reference side imports no medhub module (it runs as a plain
    script would); medhub's sides set their process up as ``reproduce`` does for a CPU run
    (``import medhub`` first, :func:`medhub.cpu.keep_heap_memory`)."""
    side, info = args.worker, {}
    if side != "reference":
        import medhub  # noqa: F401  (before torch: its OpenMP wait policy)
        from medhub.cpu import keep_heap_memory

        info["allocator"] = keep_heap_memory()
    import numpy as np
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    count = args.batches * args.batch_size
    state = load_file(args.state)
    prefix = f"{'reference' if side == 'reference' else 'medhub'}."
    weights = {name.removeprefix(prefix): value for name, value in state.items() if name.startswith(prefix)}
    if side == "reference":
        network = reference_network(1, 2)
        network.load_state_dict(weights)
        run = reference_side(network, data_folder(), count, args.batch_size)
    else:
        from medhub.data.cache import CachedSplit
        from medhub.train.compiled import compile_for_training
        from medhub.train.network import build_network

        network = build_network("random:resnet18", num_outputs=2, in_chans=1, stem="cifar")
        network.load_state_dict(weights)
        network = network.to(memory_format=torch.channels_last)
        images = np.load(args.arrays, mmap_mode="r")  # the parent's decode-once cache
        labels = np.load(Path(args.state).with_name("labels.npy"))
        cached = CachedSplit("train", np.asarray(images[:count]), labels[:count])
        compiled = compile_for_training(network) if side == "medhub_compiled" else None
        if compiled is not None:  # the first compiled step, cold (fresh Inductor cache), timed on its own
            first = CachedSplit("train", cached.images[:args.batch_size], cached.labels[:args.batch_size])
            started = time.perf_counter()
            medhub_side(network, first, args.batch_size, compiled, True)()
            info["first_step_s"] = round(time.perf_counter() - started, 2)
        run = medhub_side(network, cached, args.batch_size, compiled, True,
                          precision="bf16" if side == "medhub_bf16" else "fp32")
    print("ready " + json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        run()
        print("done", flush=True)
    return 0


class Side:
    """A side's worker process (:func:`worker`); calling it runs one round there and waits for it."""

    def __init__(self, name: str, args, threads: int, state: Path, arrays: Path, env: dict):
        command = [sys.executable, __file__, "--worker", name, "--threads", str(threads), "--state", str(state),
                   "--arrays", str(arrays), "--batches", str(args.batches), "--batch-size", str(args.batch_size)]
        self.name = name
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = self.process.stdout.readline()
        if not line.startswith("ready "):
            self.process.kill()
            raise SystemExit(f"the {name} side failed to start (see its error above)")
        self.info = json.loads(line.removeprefix("ready "))

    def __call__(self) -> None:
        try:
            self.process.stdin.write("run\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline().strip()
        except BrokenPipeError:  # the worker died between rounds
            answer = ""
        if answer != "done":
            raise SystemExit(f"the {self.name} side failed (see its error above)")

    def close(self, timeout: float = 60) -> None:
        """End the worker: EOF on its stdin (it finishes its round and exits); killed after ``timeout`` s."""
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def close_all(sides) -> None:
    """Close every side's worker, each even when another fails to end."""
    for side in sides:
        try:
            side.close()
        except BaseException:  # noqa: BLE001 - a Ctrl-C while waiting: still end the others
            side.process.kill()


def main(argv: list[str] | None = None) -> int:
    p = parser("MedMNIST v2's CIFAR-stem ResNet-18 at 28 px: medhub's trainer vs the medmnist package pipeline")
    p.add_argument("--batches", type=int, default=None, help="batches per side and round (default 6; 2 with --quick)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128, the recipe's)")
    p.add_argument("--compile", action="store_true", help="add a side with the step compiled (reproduce --compile)")
    p.add_argument("--no-compile", action="store_true", help=argparse.SUPPRESS)  # the default since 2026-12-01
    p.add_argument("--bf16", action="store_true", help="add a side in CPU bf16 autocast (reproduce --precision bf16)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the fp32 ceiling (per-convolution timings)")
    p.add_argument("--own-threads", action="store_true", help="each side its default thread count (reference: "
                   "torch's, one per core; medhub: medhub.cpu.choose_threads) instead of --threads for both")
    for name in ("--worker", "--state", "--arrays"):
        p.add_argument(name, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.batches = args.batches or (2 if args.quick else 6)
    if args.worker:
        return worker(args)
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from medhub.cpu import choose_threads, keep_heap_memory
    from medhub.data import load_task_data
    from medhub.data.cache import cached_split
    from medhub.registry import load_registry
    from medhub.train.compiled import compiler_available
    from medhub.train.network import build_network
    from medhub.train.runner import channels_last_for

    threads = {"reference": torch.get_num_threads(), "medhub": choose_threads().threads} if args.own_threads else {}
    threads = {side: threads.get(side, args.threads) for side in ("reference", "medhub")}
    setup_torch(threads["medhub"])
    repeats = args.repeats or (2 if args.quick else 5)
    count = args.batches * args.batch_size
    folder = data_folder()
    task = load_registry().get_task(TASK)
    names = ["reference", "medhub"] + [side for side, asked in (("medhub_compiled", args.compile),
                                                                ("medhub_bf16", args.bf16)) if asked]
    if "medhub_compiled" in names and not compiler_available():
        note("no C++ compiler on PATH: the compiled side is left out")
        names.remove("medhub_compiled")
    counts = {side: threads["reference" if side == "reference" else "medhub"] for side in names}
    channels_last = channels_last_for(torch.device("cpu"), "cifar", False)  # what reproduce trains in
    with tempfile.TemporaryDirectory(prefix="medhub-bench-medmnist-") as tmp:
        data = load_task_data(task, folder, img_size=28)
        split = cached_split(TASK, data.split("train"), 28, data.channels, progress=False, root=Path(tmp) / "arrays")
        if len(split) < count:
            raise SystemExit(f"{TASK} train has {len(split)} images; ask for fewer --batches")
        torch.manual_seed(0)
        network = build_network("random:resnet18", num_outputs=2, in_chans=data.channels, stem="cifar")
        reference = reference_network(data.channels, 2)
        probe = (torch.from_numpy(np.array(split.images[:16])).float() / 255 - 0.5) / 0.5
        identity = same_network(network, reference, probe)
        state = Path(tmp) / "state.safetensors"
        np.save(state.with_name("labels.npy"), np.asarray(split.labels))
        save_file({f"{side}.{name}": value.contiguous() for side, net in (("medhub", network), ("reference", reference))
                   for name, value in net.state_dict().items()}, str(state))
        env = {**ENVIRONMENT, "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}  # a cold compile
        note(f"{TASK}: {count} images, batch {args.batch_size}, {repeats} rounds, threads {counts}, sides "
             f"{', '.join(names)}, each in its own process; {identity['parameters']} parameters")
        sides = {}
        try:
            for name in names:
                sides[name] = Side(name, args, counts[name], state, split.path, env)
            times = interleaved(sides, repeats, warmup=1)
        finally:
            close_all(sides.values())
    steps = {side: median(values) / args.batches for side, values in times.items()}
    warmup = {}
    if "medhub_compiled" in sides:
        warmup["first_step_s"] = sides["medhub_compiled"].info["first_step_s"]
        saved = steps["medhub"] - steps["medhub_compiled"]
        warmup["steps_to_repay"] = round(warmup["first_step_s"] / saved) if saved > 0 else None
    result = {
        "benchmark": "medmnist_recipe",
        "quick": args.quick,
        "task": TASK,
        "data": str(folder / f"{TASK}.npz"),
        "images_per_round": count,
        "batch_size": args.batch_size,
        "repeats": repeats,
        "threads": counts,
        "own_threads": args.own_threads,
        "precision": "fp32",
        "compiled": False,
        "channels_last": channels_last,
        "allocator": sides["medhub"].info["allocator"],
        "compile_warmup": warmup or None,
        "network": identity,
        **{side: {**summary(values), "images_per_s": round(count / median(values), 1)}
           for side, values in times.items()},
        "ratio": paired_ratio(times["reference"], times["medhub"]),
    }
    if "medhub_compiled" in times:
        result["ratio_compiled"] = paired_ratio(times["reference"], times["medhub_compiled"])
        result["ratio_compiled_vs_eager"] = paired_ratio(times["medhub"], times["medhub_compiled"])
    if "medhub_bf16" in times:
        result["ratio_bf16"] = paired_ratio(times["reference"], times["medhub_bf16"])
    if not args.no_ceiling:
        keep_heap_memory()  # the floor as low as this process can make it
        batch = probe[:1].expand(args.batch_size, -1, -1, -1).contiguous(memory_format=torch.channels_last)
        result["fp32_ceiling"] = fp32_ceiling(network.to(memory_format=torch.channels_last), batch, counts["medhub"],
                                              steps["reference"])
    result["goal"] = "medhub images/s / reference images/s (same images, steps and schedule; fp32) >= 1.5"
    result["meets_goal"] = result["ratio"] >= 1.5
    result["machine"] = machine()
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
