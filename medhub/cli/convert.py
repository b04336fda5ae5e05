"""``medhub convert PATH --arch ARCH [--format FMT] -o OUT_DIR``: an original checkpoint -> a timm model folder."""

from __future__ import annotations

import argparse
import json

from medhub.bounds import cli_type
from medhub.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` command."""
    parser = subparsers.add_parser(
        "convert",
        help="convert an original checkpoint into a timm model folder (safetensors + config.json)",
        description="Convert a checkpoint in one of the original projects' layouts into model.safetensors + "
        "config.json, loadable with timm.create_model('local-dir:OUT_DIR', pretrained=True). "
        "The load is strict: only the classifier may be missing.",
    )
    parser.add_argument("path", help="checkpoint file (.pth, .pth.tar, .bin, .safetensors, .npz)")
    parser.add_argument(
        "--arch", required=True, help="timm architecture, e.g. resnet50, swin_base_patch4_window7_224"
    )
    parser.add_argument("--format", dest="fmt", default="auto", help="source format (default: auto-detect)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument(
        "--num-classes",
        type=cli_type("num_classes"),
        default=None,
        help="classifier size (default: the source's, or none if it had none)",
    )
    parser.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra timm.create_model argument (JSON value), e.g. depths=[2,2,6,2]; repeatable",
    )
    parser.add_argument(
        "--label-names", default=None, help="comma-separated class names for a kept classifier"
    )
    parser.add_argument(
        "--prefix",
        default=None,
        help="wrapper prefix to strip instead of searching for it, e.g. model. or module.backbone. "
        "(CONTAINER/PREFIX also picks the entry, e.g. state_dict_ema/; '' for none)",
    )
    parser.add_argument(
        "--key-map",
        action="append",
        default=[],
        metavar="REGEX=REPLACEMENT",
        help="rename keys after the prefix is stripped (the names a 'do not fit' error lists); repeatable, "
        r"applied in order, e.g. '^head\.=fc.'; an empty REPLACEMENT of the whole key drops it",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def _model_args(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--model-arg expects KEY=VALUE, got '{pair}'")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _key_map(pairs: list[str]) -> list[tuple[str, str]]:
    """``REGEX=REPLACEMENT`` strings -> pairs, split at the last ``=`` (a replacement is a key name)."""
    out = []
    for pair in pairs:
        pattern, sep, replacement = pair.rpartition("=")
        if not sep or not pattern:
            raise UsageError(f"--key-map expects REGEX=REPLACEMENT, got '{pair}'")
        out.append((pattern, replacement))
    return out


def run(args: argparse.Namespace) -> int:
    """Convert, load strictly, write the folder, print the report."""
    from medhub._io import check_output_dir
    from medhub.build import create_model
    from medhub.convert import convert_file
    from medhub.export import write_model_folder

    check_output_dir(args.output, "-o")
    model_args = _model_args(args.model_arg)
    options = sorted(set(model_args) & {"features_only", "out_indices", "feature_cls"})
    if options:
        raise UsageError(
            f"--model-arg {', '.join(options)}: convert writes the whole network; pass "
            f"{options[0]}= when loading the folder (medhub.load or timm.create_model)"
        )
    labels = [s.strip() for s in args.label_names.split(",")] if args.label_names else None
    state, conversion = convert_file(
        args.path, fmt=args.fmt, arch=args.arch, prefix=args.prefix, key_map=_key_map(args.key_map), **model_args
    )
    model, report = create_model(
        args.arch,
        state,
        num_classes=args.num_classes,
        conversion=conversion,
        pretrained_cfg={"label_names": labels} if labels else None,
        **model_args,
    )
    cfg = model.pretrained_cfg
    out = write_model_folder(
        args.output,
        model.state_dict(),
        arch=args.arch,
        num_classes=cfg["num_classes"],
        label_names=labels,
        pretrained_cfg=cfg,
        model_args=model_args,
        extra={
            "source_file": str(args.path),
            "source_format": conversion.fmt,
            "conversion": conversion.summary(),
            "classifier": report.classifier,
        },
    )
    if args.json:
        from medhub.cli._output import print_json

        print_json({"output": str(out), "conversion": conversion.to_dict(), "load": report.to_dict()})
    else:
        print(conversion.summary())
        print(report.summary())
        print(
            f"wrote {out}/model.safetensors and config.json; load with "
            f"timm.create_model('local-dir:{out}', pretrained=True)"
        )
        print("Research software, not a medical device.")
    return 0
