"""``medhub reproduce`` and ``medhub adapt`` (torch is imported inside the handlers only)."""

from __future__ import annotations

import argparse

from medhub.bounds import cli_type
from medhub.cli._output import print_json

DATA_HELP = ("the task's data folder, laid out as 'medhub tasks' documents (default: $MEDHUB_DATA/<task>, "
             "else ~/.cache/medhub/data/<task>; PneumoniaMNIST and BreastMNIST fall back to copies shipped with medhub)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help=DATA_HELP)
    p.add_argument("--epochs", type=cli_type("epochs"), help="maximum epochs (default: the protocol's, e.g. 100 for MedMNIST); "
                   "fewer than the protocol's is a shortened schedule: indicative, not a verdict")
    p.add_argument("--batch-size", type=cli_type("batch_size"), help="batch size (default: the protocol's)")
    p.add_argument("--lr", type=cli_type("lr", float), help="learning rate (default: the protocol's)")
    p.add_argument("--img-size", type=cli_type("img_size"), help="input size in pixels (default: the protocol's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    p.add_argument("--seed", type=cli_type("seed"), default=0, help="seed of the first run (run i uses seed+i)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run(s) in --out")
    p.add_argument("--arch", help="timm architecture, for a bare checkpoint file as MODEL")
    p.add_argument("--no-progress", action="store_true", help="no progress output (default: bars on a "
                   "terminal, else one line per epoch and per cache build on stderr)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _progress(args: argparse.Namespace) -> str:
    from medhub.data.progress import auto_mode

    return auto_mode(not args.no_progress)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``reproduce`` and ``adapt``."""
    p = subparsers.add_parser(
        "reproduce", help="fine-tune MODEL on TASK with the benchmark's protocol and compare with the paper",
        description="Fine-tune MODEL on TASK with the task's protocol (every override recorded), evaluate the best "
        "epoch on the test split, and compare with the registry's reported number. Writes report.json, report.md, "
        "ROC and learning-curve plots and each run's best checkpoint to --out (default: $MEDHUB_RESULTS or "
        "./medhub-results, then <model>/<task>/<timestamp>). Research software, not a medical device.",
    )
    p.add_argument("model", help="registry id, checkpoint folder/file (with --arch), or random:<timm arch>")
    p.add_argument("task", help="task id (see 'medhub tasks')")
    p.add_argument("--runs", type=cli_type("runs"), default=1, help="independent runs (seeds seed..seed+runs-1)")
    p.add_argument("--label-fraction", type=cli_type("label_fraction", float), default=1.0, help="fraction of the labelled data to use: the "
                   "released code's fixed subset (random.Random(99) shuffle of the list order, first int(N*p)), the "
                   "same for every run and model; the splits cut are the task's (see --dry-run)")
    p.add_argument("--subset-seed", type=cli_type("seed"), help="seed of the label-fraction subset (default 99, the released "
                   "code's); another seed is recorded and makes the run not comparable")
    p.add_argument("--linear-probe", action="store_true", help="train the classifier only (frozen backbone)")
    p.add_argument("--cifar-stem", action=argparse.BooleanOptionalAction, default=None,
                   help="random:<resnet> only: MedMNIST v2's CIFAR-style stem (3x3 stride-1 first conv, no "
                   "max-pool); default: on for MedMNIST at 28 px (the published network), off otherwise")
    p.add_argument("--keep-head", action="store_true", help="keep a pretrained classifier whose shape fits the "
                   "task (default: re-initialise it as the released code does, e.g. normal std 0.01, bias 0 for "
                   "ResNets); recorded, and makes the run not comparable")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="arithmetic (default: the released "
                   "code's, fp32 for classification); any other is an override that makes the run not comparable; on a CPU "
                   "bf16 runs autocast and fp16 runs fp32 (result.json input.precision says what ran)")
    p.add_argument("--quick", action="store_true", help="MedMNIST only: a ~150-step version of the 100-epoch "
                   "schedule (a few minutes on a 2-core CPU); its report says 'shortened schedule: indicative, not a "
                   "verdict'")
    p.add_argument("--native-size", action="store_true", help="MedMNIST only: read the native MedMNIST+ file of "
                   "--img-size (64/128/224) instead of upsampling the 28 px images with NEAREST as MedMNIST v2's "
                   "published numbers did (a different setting, compared with nothing unless registered)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan (every protocol value with its "
                   "source, the overrides, the published number it will be compared with, the expected data "
                   "layout) without reading data or building the network; with --json, as one JSON object")
    p.add_argument("--window", metavar="CENTER,WIDTH", help="DICOM VOI window replacing the files' own, in the "
                   "units after the rescale (HU for CT), e.g. --window=-600,1500 (lung); bounds map onto 0..255")
    p.add_argument("--voi-function", choices=["LINEAR", "LINEAR_EXACT", "SIGMOID"],
                   help="the DICOM VOI LUT Function of --window (default LINEAR)")
    p.add_argument("--frame", type=cli_type("frame"), metavar="N", help="read frame N (0-based) of multi-frame DICOM/TIFF "
                   "files (default: such files are refused)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="run full training batches through torch.compile (fp32, deterministic; a one-off warm-up "
                   "of a minute or more, recorded in result.json); default: off (no faster than the eager "
                   "channels-last step on a CPU, BENCHMARKS.md)")
    p.add_argument("--out", help="output folder")
    _common(p)
    p.set_defaults(func=cmd_reproduce)

    p = subparsers.add_parser(
        "adapt", help="continue training BASE on TASK's labels and register the backbone as a new checkpoint",
        description="Supervised domain adaptation: fine-tune BASE on TASK, save the best epoch's backbone to "
        "OUT_DIR (model.safetensors + config.json + README.md card) with lineage BASE + this stage, and register "
        "it in your overlay so 'medhub.load(NEW_ID)' and 'medhub push OUT_DIR --repo ...' work next.",
    )
    p.add_argument("base", help="registry id, checkpoint folder/file (with --arch), or random:<timm arch>")
    p.add_argument("task", help="task id whose labels train the backbone")
    p.add_argument("--out", required=True, help="folder for the new checkpoint")
    p.add_argument("--id", dest="new_id", help="registry id of the new checkpoint (default: <base>_<task>)")
    p.add_argument("--overlay", help="registry overlay file to register it in (default: "
                   "~/.config/medhub/registry.d/user.yaml; add another file to MEDHUB_REGISTRY to use it)")
    _common(p)
    p.set_defaults(func=cmd_adapt)


def pixel_options(args: argparse.Namespace) -> dict | None:
    """``--window C,W``, ``--voi-function`` and ``--frame`` as PixelRule fields (None when none is given)."""
    from medhub.errors import UsageError

    pixels = {}
    if args.window is not None:
        try:
            center, width = (float(v) for v in args.window.split(","))
        except ValueError:
            raise UsageError(f"--window takes CENTER,WIDTH (e.g. --window=-600,1500), got '{args.window}'") from None
        pixels["window"] = (center, width)
    if args.voi_function is not None:
        if args.window is None:
            raise UsageError("--voi-function applies to --window; give both, e.g. --window=40,400 --voi-function SIGMOID")
        pixels["voi_function"] = args.voi_function
    if args.frame is not None:
        pixels["frame"] = args.frame
    return pixels or None


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``medhub reproduce``."""
    from medhub.reproduce import reproduce
    from medhub.train.report import DISCLAIMER, comparison_line, verdict_lines

    result = reproduce(
        args.model, args.task, data_dir=args.data_dir, runs=args.runs, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, img_size=args.img_size, label_fraction=args.label_fraction,
        linear_probe=args.linear_probe, device=args.device, seed=args.seed, out=args.out, resume=args.resume,
        arch=args.arch, progress=_progress(args), cifar_stem=args.cifar_stem, keep_head=args.keep_head,
        precision=args.precision, subset_seed=args.subset_seed, quick=args.quick, native_size=args.native_size,
        dry_run=args.dry_run, pixels=pixel_options(args), compile_model=args.compile,
    )
    if args.json:
        print_json(result)
        return 0
    if args.dry_run:
        print(plan_text(result))
        return 0
    print(comparison_line(result))
    print(f"report: {result['out']}/report.md")
    print(DISCLAIMER)
    print("\n".join(verdict_lines(result)))
    return 0


def plan_text(plan: dict) -> str:
    """The dry-run plan as aligned ``key: value`` lines, sources beside the values they back."""
    import json

    sources = plan.get("sources") or {}
    shown = ("recipe", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "scheduler", "scheduler_kwargs",
             "warmup_epochs", "patience", "loss", "metric", "selection", "normalization", "head_init", "scratch_init",
             "precision", "stem", "img_size", "input", "augment", "split", "label_fraction", "subset",
             "labels_trained", "labels_evaluated", "decoder")
    lines = [f"plan for {plan['model']} on {plan['task']} (nothing read, nothing built)"]
    for key in shown:
        if key not in plan or (plan[key] is None and key not in ("scheduler",)):
            continue
        value = plan[key] if isinstance(plan[key], str) else json.dumps(plan[key])
        where = sources.get(key)
        lines.append(f"  {key:<17} {value}" + (f"   [{where}]" if where else ""))
    lines.append(f"  {'overrides':<17} {json.dumps(plan['overrides']) if plan['overrides'] else 'none'}")
    published = plan.get("published")
    lines.append(f"  {'published':<17} " + (f"{published['mean']:.4f} ({published['source']})" if published
                                             else "none for this setting"))
    lines.append(f"  {'comparable':<17} {plan['comparable']}")
    for title, items in (("deviations", plan["deviations"]), ("protocol partly unknown", plan["protocol_partly_unknown"]),
                         ("known differences", plan["known_differences"]), ("notes", plan["notes"])):
        lines += [f"  {title}:"] + [f"    - {item}" for item in items] if items else []
    lines.append(f"  data layout ({plan['data_layout']['reader']}): {plan['data_layout']['description']}")
    return "\n".join(lines)


def cmd_adapt(args: argparse.Namespace) -> int:
    """``medhub adapt``."""
    from medhub.adapt import adapt

    result = adapt(
        args.base, args.task, data_dir=args.data_dir, out=args.out, new_id=args.new_id, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, img_size=args.img_size, device=args.device, seed=args.seed,
        resume=args.resume, arch=args.arch, progress=_progress(args), overlay=args.overlay,
    )
    if args.json:
        print_json(result)
        return 0
    chain = " > ".join(stage["dataset"] for stage in result["lineage"])
    print(f"{result['id']}: {chain}; test {result['metric'].upper()} {result['test_metric']:.4f} after "
          f"{result['epochs']} epoch(s)")
    print(f"saved to {result['out']}; registered in {result['overlay']}")
    print(f"next: medhub.load('{result['id']}')  or  medhub push {result['out']} --repo ORG/NAME")
    return 0
