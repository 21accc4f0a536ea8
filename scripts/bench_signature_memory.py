"""Signature extraction memory does not grow with the number of probes (beyond its output).

For N = 64 .. 4096 probes, a fresh process computes a signature (cache off) of a synthetic
Llama with a 32 000-token vocabulary (full logits of one batch: batch x length x vocab floats,
the largest transient) and records its peak RSS. Each process first computes a 1-probe
signature, so the model load and the first batch's allocations are in the baseline; the
figure of interest is the peak increase over that baseline minus the signature's own size
(which must grow with N: it holds top-k log-probabilities per token and pooled hidden states
per probe). Goal: that working memory is flat in N.

Prints a table and writes JSON (default scripts/results/bench_signature_memory.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import gc, json, random, resource, sys
import torch
from simmerge.signals.probes import ProbeSet
from simmerge.signals.signatures import SignatureConfig, compute_signature
torch.set_num_threads(2)
model, n = sys.argv[1], int(sys.argv[2])
config = SignatureConfig(max_length=64, batch_size=16)
rng = random.Random(0)
letters = "abcdefghijklmnopqrstuvwxyz"

def probes(k):
    texts = ["".join(rng.choice(letters) for _ in range(rng.randint(20, 60))) for _ in range(k)]
    return ProbeSet(f"synthetic-{k}", tuple(map(str, range(k))), tuple(texts))

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

compute_signature(model, probes(1), config=config, use_cache=False, progress=False)
gc.collect()
base = peak_mb()
sig = compute_signature(model, probes(n), config=config, use_cache=False, progress=False)
peak = peak_mb()
size = sum(t.numel() * t.element_size() for t in sig.tensors().values()) / 2**20
print(json.dumps({"n": n, "baseline_mb": base, "peak_mb": peak, "signature_mb": size}))
"""


def main(argv: list[str] | None = None) -> int:
    from simmerge.infra.files import write_json_report
    from simmerge.zoo.micro import save_model, tiny_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,256,1024,4096")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--out", default=str(ROOT / "scripts/results/bench_signature_memory.json"))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sigmem-") as tmp:
        config = tiny_config(
            vocab_size=args.vocab,
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=64,
        )
        model = save_model(Path(tmp) / "model", seed=0, config=config)
        for n in (int(s) for s in args.sizes.split(",")):
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(model), str(n)],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["increase_mb"] = row["peak_mb"] - row["baseline_mb"]
            row["working_mb"] = row["increase_mb"] - row["signature_mb"]
            rows.append({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
            print(f"N={n} done", flush=True)
    print(f"{'probes':>7} {'baseline MB':>12} {'peak MB':>8} {'increase':>9} {'signature':>10} "
          f"{'working':>8}")  # fmt: skip
    for r in rows:
        print(
            f"{r['n']:>7} {r['baseline_mb']:>12.1f} {r['peak_mb']:>8.1f} {r['increase_mb']:>9.1f} "
            f"{r['signature_mb']:>10.1f} {r['working_mb']:>8.1f}"
        )
    report = {
        "what": "peak RSS of compute_signature vs number of probes (fresh process each)",
        "model": "synthetic Llama, hidden 256, 4 layers, vocab 32000, probes cut at 64 tokens",
        "batch_size": 16,
        "platform": platform.platform(),
        "rows": rows,
    }
    write_json_report(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
