"""Benchmark 1: ``medhub.load`` of a converted local checkpoint versus timm + safetensors, and import cost.

For each architecture a random-weight model is written as a medhub model folder (``model.safetensors`` +
``config.json``, by :func:`medhub.export.write_model_folder`, no network). Then, in one process, alternating:

* medhub: ``medhub.load(folder)``
* timm:   ``timm.create_model(arch)`` + ``load_state_dict(safetensors.torch.load_file(...))``

both warm (one untimed round first). Fresh interpreters measure imports: ``import medhub``,
``from medhub import load`` (the lazy attribute), ``import timm``, and (full setting) a cold first load end
to end (import torch and the library, then one load of the first architecture) on each side.

Goal: medhub/timm <= 1.10 for the warm load and for import. Last stdout line: one JSON object.

    python benchmarks/load.py --quick
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _common import (
    emit,
    interleaved,
    machine,
    median,
    note,
    paired_ratio,
    parser,
    ratio,
    setup_torch,
    subprocess_seconds,
    summary,
)

IMPORT_MEDHUB = "import time; t = time.perf_counter(); import medhub; print(time.perf_counter() - t)"
IMPORT_LOAD = "import time; t = time.perf_counter(); from medhub import load; print(time.perf_counter() - t)"
IMPORT_TIMM = "import time; t = time.perf_counter(); import timm; print(time.perf_counter() - t)"
COLD_MEDHUB = (
    "import time; t = time.perf_counter(); import torch; torch.set_num_threads({threads}); "
    "import medhub; medhub.load({folder!r}); print(time.perf_counter() - t)"
)
COLD_TIMM = (
    "import time; t = time.perf_counter(); import torch; torch.set_num_threads({threads}); "
    "import timm; from safetensors.torch import load_file; m = timm.create_model({arch!r}); "
    "m.load_state_dict(load_file({weights!r})); print(time.perf_counter() - t)"
)


def write_checkpoint(arch: str, out: Path) -> Path:
    """A random-weight ``arch`` written as a medhub model folder (what ``medhub convert`` produces)."""
    import timm

    from medhub.export import write_model_folder

    model = timm.create_model(arch, pretrained=False)
    return write_model_folder(
        out / arch,
        model.state_dict(),
        arch=arch,
        num_classes=model.num_classes,
        pretrained_cfg=dict(model.pretrained_cfg),
        extra={"source_format": "benchmark"},
    )


def warm_loads(arch: str, folder: Path, repeats: int) -> dict:
    """medhub.load vs timm.create_model + load_state_dict, interleaved, warm."""
    import timm
    from safetensors.torch import load_file

    import medhub

    weights = str(folder / "model.safetensors")

    def medhub_side() -> None:
        medhub.load(folder)

    def timm_side() -> None:
        model = timm.create_model(arch)
        model.load_state_dict(load_file(weights))

    times = interleaved({"medhub": medhub_side, "timm": timm_side}, repeats)
    return {
        "medhub": summary(times["medhub"]),
        "timm": summary(times["timm"]),
        "ratio": paired_ratio(times["medhub"], times["timm"]),
        "ratio_of_medians": ratio(median(times["medhub"]), median(times["timm"])),
    }


def imports(folder: Path, arch: str, repeats: int, cold_repeats: int, threads: int) -> dict:
    """Import times in fresh interpreters, alternating sides; plus ``cold_repeats`` cold first loads per side."""
    times: dict[str, list[float]] = {
        k: [] for k in ("import_medhub", "from_medhub_import_load", "import_timm")
    }
    for round_ in range(repeats):
        order = [
            ("import_medhub", IMPORT_MEDHUB),
            ("from_medhub_import_load", IMPORT_LOAD),
            ("import_timm", IMPORT_TIMM),
        ]
        for name, code in order if round_ % 2 == 0 else order[::-1]:
            times[name].append(subprocess_seconds(code))
    cold: dict[str, list[float]] = {"medhub": [], "timm": []}
    medhub_code = COLD_MEDHUB.format(threads=threads, folder=str(folder))
    timm_code = COLD_TIMM.format(threads=threads, arch=arch, weights=str(folder / "model.safetensors"))
    for round_ in range(cold_repeats):
        pair = [("medhub", medhub_code), ("timm", timm_code)]
        for name, code in pair if round_ % 2 == 0 else pair[::-1]:
            cold[name].append(subprocess_seconds(code))
    out = {
        **{name: summary(values) for name, values in times.items()},
        "ratio_import": paired_ratio(times["import_medhub"], times["import_timm"]),
        "ratio_from_medhub_import_load": paired_ratio(times["from_medhub_import_load"], times["import_timm"]),
    }
    if cold_repeats:
        out[f"cold_first_load_{arch}"] = {
            "medhub": summary(cold["medhub"]),
            "timm": summary(cold["timm"]),
            "ratio": paired_ratio(cold["medhub"], cold["timm"]),
            "ratio_of_medians": ratio(median(cold["medhub"]), median(cold["timm"])),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser("medhub.load vs timm.create_model + load_state_dict, and import medhub vs import timm")
    p.add_argument("--archs", default="resnet50,convnext_tiny", help="comma-separated timm architectures")
    p.add_argument(
        "--import-repeats",
        type=int,
        default=None,
        help="fresh-interpreter import timings per side (default 5; 3 with --quick)",
    )
    p.add_argument(
        "--cold-repeats",
        type=int,
        default=None,
        help="fresh-interpreter cold first loads per side (default 5; 0 with --quick)",
    )
    args = p.parse_args(argv)
    setup_torch(args.threads)
    repeats = args.repeats or 5
    import_repeats = args.import_repeats or (3 if args.quick else 5)
    cold_repeats = args.cold_repeats if args.cold_repeats is not None else (0 if args.quick else 5)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    result: dict = {"benchmark": "load", "quick": args.quick, "repeats": repeats, "archs": archs}
    with tempfile.TemporaryDirectory(prefix="medhub-bench-load-") as tmp:
        folders = {arch: write_checkpoint(arch, Path(tmp)) for arch in archs}
        warm = {}
        for arch, folder in folders.items():
            note(f"warm load {arch} ({repeats} runs per side, interleaved)")
            warm[arch] = warm_loads(arch, folder, repeats)
        note("imports in fresh interpreters")
        result["imports"] = imports(folders[archs[0]], archs[0], import_repeats, cold_repeats, args.threads)
    result["warm_load"] = warm
    result["ratio_load"] = max(v["ratio"] for v in warm.values())  # the worse architecture
    result["ratio_import"] = result["imports"]["ratio_import"]
    result["goal"] = "ratio_load <= 1.10 and ratio_import <= 1.10"
    result["meets_goal"] = result["ratio_load"] <= 1.10 and result["ratio_import"] <= 1.10
    result["machine"] = machine()
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
