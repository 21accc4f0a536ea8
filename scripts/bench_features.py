"""Benchmark the feature stage: signatures, weight sketches and pair features.

Three measurements, each against a baseline taken in the same run:

1. signature extraction (``compute_signature``, cache off: load, batched forward with hidden
   states, top-k, pooling) vs a bare Hugging Face forward pass (load + the same batches,
   no hidden states, logits discarded) over the same probes. Goal: <= 1.2x.
2. one sketch (``sketch_task_vector``, cache off) vs one read of the weights it needs (every
   tensor of the expert and of the base, as float32). Goal: <= 1.5x. On the zoo and on a
   synthetic sharded checkpoint of ``--synthetic-mb`` per model.
3. pair features for N = 16 models, all ordered pairs, from cached signatures and sketches
   (10 zoo experts + 6 task-arithmetic merges of them, so 16 real models). Goal: < 1 s on the
   general probe set.

Prints a table and writes JSON (default ``scripts/results/bench_features_<device>.json``).
Run it on an idle machine: other processes on the same cores distort every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from functools import partial
from itertools import combinations
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _row(what: str, seconds: float, baseline: str, base_seconds: float, goal: float) -> dict:
    return {
        "what": what,
        "seconds": round(seconds, 4),
        "baseline": baseline,
        "baseline_seconds": round(base_seconds, 4),
        "ratio": round(seconds / base_seconds, 3),
        "goal": goal,
    }


def bare_forward(model_dir: Path, probes, batch_size: int, max_length: int, device) -> None:
    from simmerge.io.models import load_model, load_tokenizer, pad_token_id, right_padded

    net = load_model(model_dir, device)
    tok = load_tokenizer(model_dir)
    # the same cut as compute_signature: max_length or the model's context, whichever is shorter
    max_length = min(max_length, int(net.config.max_position_embeddings or max_length))
    seqs = [list(tok(t)["input_ids"])[:max_length] for t in probes.texts]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    pad = pad_token_id(tok, net)
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            ids, mask = right_padded([seqs[j] for j in order[i : i + batch_size]], pad, device)
            net(input_ids=ids, attention_mask=mask)


def read_weights(expert: Path, base: Path) -> None:
    from simmerge.io.checkpoint import open_checkpoint

    e, b = open_checkpoint(expert), open_checkpoint(base)
    for name in b.names:
        b.get(name, dtype=torch.float32)
        e.get(name, dtype=torch.float32)


def bench_signatures(zoo: Path, repeats: int, device) -> list[dict]:
    from simmerge.signals.probes import ProbeSet
    from simmerge.signals.signatures import SignatureConfig, compute_signature

    cfg = SignatureConfig()
    model = zoo / "experts" / "reverse_a"
    rows = []
    for probes in (ProbeSet.load("general"), ProbeSet.load(zoo / "probes" / "reverse.jsonl")):
        signature = partial(
            compute_signature,
            model,
            probes,
            config=cfg,
            device=device,
            use_cache=False,
            progress=False,
        )
        bare = best_of(
            partial(bare_forward, model, probes, cfg.batch_size, cfg.max_length, device), repeats
        )
        sig = best_of(signature, repeats)
        what = f"signature, {probes.name} ({len(probes)} probes)"
        rows.append(_row(what, sig, "bare HF forward", bare, 1.2))
    return rows


def synthetic_pair(folder: Path, total_mb: float) -> tuple[Path, Path]:
    from bench_merge import make_model

    shape = (1024, 1024)  # 4 MiB float32 tensors named like a Llama model
    kinds = ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")
    n = max(4, round(total_mb / 4))
    names = [f"model.layers.{i // 4}.{kinds[i % 4]}.weight" for i in range(n)]
    base, expert = folder / "base", folder / "expert"
    make_model(base, names, shape, 256 << 20, None, seed=1)
    make_model(expert, names, shape, 256 << 20, base, seed=2)
    for f in (base, expert):  # a config the sketch can read the depth from
        (f / "config.json").write_text(json.dumps({"num_hidden_layers": n // 4}))
    return expert, base


def bench_sketches(zoo: Path, workdir: Path, synthetic_mb: float, repeats: int) -> list[dict]:
    from simmerge.signals.sketch import sketch_task_vector

    cases = [("zoo expert", zoo / "experts" / "reverse_a", zoo / "base")]
    if synthetic_mb > 0:
        expert, base = synthetic_pair(workdir / "synthetic", synthetic_mb)
        cases.append((f"synthetic {synthetic_mb:.0f} MB", expert, base))
    rows = []
    for label, expert, base in cases:
        read_weights(expert, base)  # warm the page cache for both timings
        read = best_of(partial(read_weights, expert, base), repeats)
        sk = best_of(
            partial(sketch_task_vector, expert, base, use_cache=False, progress=False), repeats
        )
        rows.append(_row(f"sketch, {label}", sk, "read expert + base", read, 1.5))
    return rows


def sixteen_models(zoo: Path, workdir: Path) -> list[Path]:
    from simmerge.catalog import Catalog
    from simmerge.merging import MergePlan, PlanMember, merge

    cat = Catalog.load(zoo / "catalog.yaml")
    models = [e.path for e in cat.experts]
    singles = [e for e in cat.experts if len(e.tasks) == 1]
    for a, b in list(combinations(singles, 2))[::5][: 16 - len(models)]:
        out = workdir / "merges" / f"{a.name}+{b.name}"
        if not out.exists():
            plan = MergePlan(
                operator="task_arithmetic",
                base=str(cat.base.path),
                members=(PlanMember(model=str(a.path)), PlanMember(model=str(b.path))),
                params={"lambda": 0.8},
            )
            merge(plan, out, progress=False)
        models.append(out)
    return models


def bench_pairs(zoo: Path, workdir: Path, repeats: int, device) -> list[dict]:
    from simmerge.signals.probes import ProbeSet
    from simmerge.signals.signatures import compute_signature
    from simmerge.signals.similarity import ModelProfile
    from simmerge.signals.sketch import sketch_task_vector

    cache = workdir / "cache"
    sets = {"general": ProbeSet.load("general")}
    sets["reverse"] = ProbeSet.load(zoo / "probes" / "reverse.jsonl")
    profiles = {}
    for path in sixteen_models(zoo, workdir):
        sigs = {
            k: compute_signature(path, p, device=device, cache_dir=cache, progress=False)
            for k, p in sets.items()
        }
        sketch = sketch_task_vector(path, zoo / "base", cache_dir=cache, progress=False)
        profiles[path.name] = ModelProfile(path.name, sketch, sigs)
    rows = []
    for keys in (("general",), ("general", "reverse")):
        seconds = best_of(partial(_all_pairs, profiles, keys), repeats)
        rows.append(
            {
                "what": f"pair features, N=16, {' + '.join(keys)} ({16 * 15 * len(keys)} rows)",
                "seconds": round(seconds, 4),
                "baseline": None,
                "baseline_seconds": None,
                "ratio": None,
                "goal_seconds": 1.0,
            }
        )
    return rows


def _all_pairs(profiles, keys) -> None:
    from simmerge.signals.profiles import feature_rows
    from simmerge.signals.similarity import ModelProfile

    # fresh profiles: the per-model precomputations (probabilities, bit planes) are part of
    # the measured cost
    fresh = {
        n: ModelProfile(
            n, _reload_sketch(p.sketch), {k: _reload_signature(p.signatures[k]) for k in keys}
        )
        for n, p in profiles.items()
    }
    out = feature_rows(fresh)
    if len(out) != 16 * 15 * len(keys):
        raise RuntimeError(f"expected {16 * 15 * len(keys)} rows, got {len(out)}")


def _reload_signature(sig):
    from simmerge.signals.signatures import Signature

    t = {k: v for k, v in sig.tensors().items() if k != "vocab_size"}
    return Signature(sig.model, sig.probe_name, sig.probe_hash, sig.vocab_size, **t)


def _reload_sketch(sk):
    from simmerge.signals.sketch import TaskVectorSketch

    return TaskVectorSketch(sk.model, sk.base, sk.layout_hash, sk.config, **sk.tensors())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--zoo", default=str(ROOT / "runs" / "zoo"), help="zoo folder (built if missing)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--synthetic-mb", type=float, default=512, help="0 to skip")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from simmerge.zoo import build_zoo

    zoo = Path(build_zoo(args.zoo, progress=False))
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        results = bench_signatures(zoo, args.repeats, device)
        results += bench_sketches(zoo, work, args.synthetic_mb, args.repeats)
        results += bench_pairs(zoo, work, args.repeats, device)
    print(f"{'measurement':<58} {'seconds':>8} {'baseline':>9} {'ratio':>6} {'goal':>6}")
    for r in results:
        base = f"{r['baseline_seconds']:.3f}" if r["baseline_seconds"] is not None else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        goal = f"{r['goal']}x" if "goal" in r else f"<{r['goal_seconds']}s"
        print(f"{r['what']:<58} {r['seconds']:>8.3f} {base:>9} {ratio:>6} {goal:>6}")
    report = {
        "benchmark": "bench_features",
        "command": " ".join(["scripts/bench_features.py", *sys.argv[1:]]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "device": str(device),
        },
        "results": results,
    }
    out = Path(args.out or ROOT / "scripts" / "results" / f"bench_features_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
