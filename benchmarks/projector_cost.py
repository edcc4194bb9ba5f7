"""What the EmbeddingProjector costs per method on this machine.

Projects N x D embeddings (default 2,000 x 1,280, MobileNetV2's pooled
width) with PCA, t-SNE (openTSNE) and UMAP, as the component does, and times
the metrics; t-SNE is also timed with the gradient the component does not
pick at this N (FFT vs. Barnes-Hut). "cold" is the first call in a fresh process (imports and
numba compilation included: what a pipeline run pays once), "warm" a second
call with the same data. Embeddings are a synthetic 10-class mixture unless
--features/--labels give real ones (.npy).

    python benchmarks/projector_cost.py [--n 2000] [--dim 1280] [--repeats 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfx_transfer.components import projections  # noqa: E402

import numpy as np  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "projector_cost.json")


def synthetic(n, dim, classes, seed):
    """Non-negative (post-ReLU like pooled CNN features), overlapping classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(0, 1, (classes, dim))
    x = np.maximum(centres[labels] + rng.normal(0, 2.0, (n, dim)), 0).astype(np.float32)
    return x, labels.astype(str)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeats", type=int, default=1, help="warm calls per method")
    p.add_argument("--features", help=".npy [N, D] float embeddings instead of synthetic ones")
    p.add_argument("--labels", help=".npy [N] labels for --features")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)

    if args.features:
        x = np.load(args.features).astype(np.float32)[:args.n]
        labels = np.load(args.labels).astype(str)[:args.n]
        source = os.path.basename(args.features)
    else:
        x, labels = synthetic(args.n, args.dim, args.classes, args.seed)
        source = f"synthetic {args.classes}-class mixture"

    rows = []
    used = projections.tsne_gradient(len(x))
    steps = [("pca", "pca", None), (f"tsne ({used}, used)", "tsne", used),
             ("umap", "umap", None),
             # the other t-SNE gradient, for the record
             (f"tsne ({'bh' if used == 'fft' else 'fft'}, not used)", "tsne",
              "bh" if used == "fft" else "fft")]
    for step, method, gradient in steps:
        if gradient:
            projections.TSNE_FFT_FROM = 0 if gradient == "fft" else len(x) + 1
        coords, cold = timed(lambda: projections.project(x, method, args.seed))
        warm = [timed(lambda: projections.project(x, method, args.seed))[1]
                for _ in range(args.repeats)]
        _, trust = timed(lambda: projections.trustworthiness(x, coords))
        _, sil2d = timed(lambda: projections.silhouette(coords, labels))
        rows.append({"step": step, "cold_s": round(cold, 2),
                     "warm_s": round(float(np.median(warm)), 2) if warm else None,
                     "trustworthiness_s": round(trust, 2), "silhouette_2d_s": round(sil2d, 3)})
    _, sil = timed(lambda: projections.silhouette(x, labels))
    _, knn = timed(lambda: projections.knn_accuracy(x, labels, args.seed))
    rows.append({"step": "silhouette (full space)", "cold_s": round(sil, 2)})
    rows.append({"step": f"{projections.KNN_K}-NN accuracy ({projections.KNN_FOLDS}-fold)",
                 "cold_s": round(knn, 2)})

    result = {
        "n": int(x.shape[0]), "dim": int(x.shape[1]), "data": source,
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
                    "python": platform.python_version(), "processor": platform.processor()},
        # One stage (before or after) runs the first three steps and the metrics.
        "per_stage_s": {"projections_warm": round(sum(r["warm_s"] or 0 for r in rows[:3]), 2),
                        "projections_cold": round(sum(r["cold_s"] for r in rows[:3]), 2),
                        "metrics": round(sum(r.get("trustworthiness_s", 0) +
                                             r.get("silhouette_2d_s", 0) for r in rows[:3])
                                         + sil + knn, 2)},
        "rows": rows,
    }
    print(f"{result['n']} x {result['dim']} ({source}); {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'step':34s} {'cold s':>8s} {'warm s':>8s} {'trust s':>8s}")
    for r in rows:
        warm = "" if r.get("warm_s") is None else f"{r['warm_s']:.2f}"
        trust = "" if r.get("trustworthiness_s") is None else f"{r['trustworthiness_s']:.2f}"
        print(f"{r['step']:34s} {r['cold_s']:8.2f} {warm:>8s} {trust:>8s}")
    print("per stage (before or after):", result["per_stage_s"])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", args.out)
    return result


if __name__ == "__main__":
    main()
