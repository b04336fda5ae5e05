"""Domain adaptation on real chest X-rays, in minutes on a laptop CPU.

1. ``medhub adapt``: train a backbone on one real chest X-ray set (the NIH ChestX-ray14 1000-image
   subset, normal vs abnormal) and register it under a new id.
2. ``medhub reproduce``: fine-tune that checkpoint on another set (PneumoniaMNIST, shipped with medhub)
   with few labels, and the base (from scratch for ``random:``) with the same protocol.
3. Print both test AUCs side by side.

    python examples/adapt_then_finetune.py --nih-dir ../shared/data/nih_cxr14_1000_64px

With network access, ``--base resnet18_imagenet1k``-style registry ids work too (ImageNet -> NIH -> target,
the benchmark's domain-adaptive chain). Research software, not a medical device.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_id(stem: str) -> str:
    """``stem``, or ``stem_2``, ``stem_3``... when an earlier run of this example registered it already."""
    from medhub.errors import UnknownModelError
    from medhub.registry import load_registry

    for n in range(1, 1000):
        candidate = stem if n == 1 else f"{stem}_{n}"
        try:
            load_registry().resolve_id(candidate)
        except UnknownModelError:
            return candidate
    raise SystemExit("too many earlier runs of this example in your registry overlay")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nih-dir", type=Path, default=HERE.parent.parent / "shared" / "data" / "nih_cxr14_1000_64px",
                        help="folder holding NIH1000/{train,valid,test}/{0_normal,1_abnormal}/*.png")
    parser.add_argument("--base", default="random:resnet18", help="what to adapt: random:<arch> or a registry id")
    parser.add_argument("--target", default="pneumoniamnist", help="task to fine-tune on afterwards")
    parser.add_argument("--adapt-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None,
                        help="fine-tuning epochs on the target (default: reproduce's --quick MedMNIST schedule, "
                        "~150 steps; pass --epochs for other targets)")
    parser.add_argument("--label-fraction", type=float, default=0.1, help="target labels used (few-label regime)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="medhub-example-")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ["MEDHUB_REGISTRY"] = os.pathsep.join(
        p for p in (str(HERE / "nih1000_task.yaml"), os.environ.get("MEDHUB_REGISTRY", "")) if p)

    from medhub.adapt import adapt
    from medhub.errors import MedhubError
    from medhub.reproduce import reproduce

    new_id = free_id(f"{args.base.split(':')[-1]}_nih1000")
    overlay = args.out / "registry.yaml"  # the example's own overlay: your registry.d is never touched
    try:
        adapted = adapt(args.base, "nih1000", data_dir=args.nih_dir, out=args.out / "checkpoint", new_id=new_id,
                        epochs=args.adapt_epochs, seed=args.seed, overlay=overlay)
        os.environ["MEDHUB_REGISTRY"] += os.pathsep + str(overlay)
        print(f"1. adapted {args.base} on NIH1000: test AUC {adapted['test_metric']:.4f} -> registered as {new_id}")
        # both networks with timm's stem (the adapted checkpoint has it), so the comparison is like for like
        common = dict(label_fraction=args.label_fraction, seed=args.seed, cifar_stem=False,
                      **({"epochs": args.epochs} if args.epochs else {"quick": True}))
        results = {name: reproduce(model, args.target, out=args.out / name, **common)
                   for name, model in (("adapted", new_id), ("base", args.base))}
    except MedhubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    epochs = results["base"]["runs"][0]["epochs"]
    print(f"2. fine-tuned on {args.target} with {args.label_fraction:.0%} of its labels, {epochs} epochs:")
    for name, report in results.items():
        print(f"   {name:8s} {report['model']:40s} test AUC {report['mean']:.4f}   ({report['out']}/report.md)")
    gain = results["adapted"]["mean"] - results["base"]["mean"]
    print(f"3. domain adaptation changed the test AUC by {gain:+.4f} (one seed: rerun with --seed to see the spread)")
    print(f"the adapted checkpoint is registered in {overlay} only: MEDHUB_REGISTRY={overlay} loads {new_id}")
    print("Research software, not a medical device.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
