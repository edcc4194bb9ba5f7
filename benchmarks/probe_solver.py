"""The linear probe's head solver against the hand-written peer, on three datasets.

For each dataset, in one invocation: the peer (benchmarks/peer_probe.py:
tf.data + Keras features + scikit-learn LogisticRegression), then the
pipeline (`tfx-transfer run`) with `probe_solver: sgd` (the epoch-based
probe, before) and `probe_solver: lbfgs` (after), sharing one pipeline root
per dataset so ExampleGen, statistics and Transform run once. Same weights
(MobileNetV2, ImageNet, ../shared/weights), same images, 96 px; accuracy on
the dataset's test split (TFMA for the pipeline).

Datasets:
  sample    data/cifar10-sample (the demo: 300 train / 100 test), demo settings
            (20 epochs, batch 32, 1e-3)
  cifar50   50 images per class from CIFAR-10 train (the first 50 file names of
            each class folder; 500 train), the full 10,000-image test split;
            demo settings
  cifar10   full CIFAR-10 (50,000 / 10,000), 10 epochs, batch 128 (the
            deterministic number of docs/results.md)

    python benchmarks/probe_solver.py --cifar CIFAR_DIR --shared-weights ../shared/weights \
        --work /tmp/probe-bench --datasets sample,cifar50,cifar10

Writes benchmarks/results/probe_solver.{json,md}; partial results survive a failure.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from training_cifar10 import install_weights, run_config  # noqa: E402

WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
DEMO = dict(epochs=20, batch_size=32, learning_rate=1e-3)
DATASETS = {
    # name: (description, settings)
    "sample": ("bundled demo sample, 300 train / 100 test", DEMO),
    "cifar50": ("CIFAR-10, 50 train images per class (500), full test split (10,000)", DEMO),
    "cifar10": ("full CIFAR-10, 50,000 train / 10,000 test",
                dict(epochs=10, batch_size=128, learning_rate=1e-3)),
}
SOLVERS = ("sgd", "lbfgs")


def dataset_dir(name: str, cifar: str, work: str) -> str:
    if name == "sample":
        return os.path.join(REPO, "data", "cifar10-sample")
    if name == "cifar10":
        return cifar
    # cifar50: links to the first 50 files (sorted names) of each train class, all test files.
    out = os.path.join(work, "data", "cifar50")
    if not os.path.isdir(out):
        for split, limit in (("train", 50), ("test", None)):
            for cls in sorted(os.listdir(os.path.join(cifar, split))):
                os.makedirs(os.path.join(out + ".tmp", split, cls))
                for f in sorted(glob.glob(os.path.join(cifar, split, cls, "*")))[:limit]:
                    os.symlink(os.path.abspath(f), os.path.join(out + ".tmp", split, cls,
                                                                os.path.basename(f)))
        os.rename(out + ".tmp", out)
    return out


def run_pipeline(name: str, data: str, solver: str, settings: dict, work: str) -> dict:
    output = os.path.join(work, "runs", name)
    cfg = dict(data=data, backbone="MobileNetV2", weights="imagenet", image_size=96,
               mode="linear_probe", probe_solver=solver, output=output, projector=False,
               baseline=False, max_accuracy_drop=1.0, model_name=f"{name}-{solver}", **settings)
    summary, wall = run_config(cfg, work, f"{name}_{solver}")
    phases = {p["phase"]: p for p in summary["training"]["phases"]}
    probe = phases["probe"]
    return {"accuracy": summary["metrics"]["accuracy"], "trainer_s": summary["timings_s"]["Trainer"],
            "probe_s": probe["seconds"], "extract_s": phases["feature_extraction"]["seconds"],
            "run_wall_s": round(wall, 1), "peak_rss_mb": summary.get("peak_rss_mb"),
            "train_examples": summary["train_examples"], "eval_examples": summary["eval_examples"],
            **({k: probe[k] for k in ("l2", "l2_grid", "iterations", "grad_norm", "converged",
                                      "solve_seconds")} if "solver" in probe else
               {"epochs": probe["epochs"]})}


def run_peer(name: str, data: str, work: str, weights: str) -> dict:
    import peer_probe

    cache = os.path.join(work, f"peer_{name}_96.npz")
    return peer_probe.run(data, weights, 96, cache=cache)


def write(results: dict, out: str):
    md = ["| dataset | train / test | peer | probe before (sgd) | probe after (lbfgs) | "
          "after - peer (pt) | chosen L2 | probe phase s before / after | Trainer s before / after |",
          "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["datasets"].items():
        peer, sgd, lb = r.get("peer"), r.get("sgd"), r.get("lbfgs")
        pct = lambda v: f"{100 * v:.2f} %" if v is not None else ""  # noqa: E731
        get = lambda d, k: d.get(k) if d else None  # noqa: E731
        ref = lb or sgd or {}
        md.append(
            f"| {name} | {ref.get('train_examples', '')} / {ref.get('eval_examples', '')} | "
            f"{pct(get(peer, 'accuracy'))} | {pct(get(sgd, 'accuracy'))} | {pct(get(lb, 'accuracy'))} | "
            + (f"{100 * (lb['accuracy'] - peer['accuracy']):+.2f}" if lb and peer else "")
            + f" | {get(lb, 'l2') if lb else ''} | {get(sgd, 'probe_s') or ''} / {get(lb, 'probe_s') or ''} | "
            f"{get(sgd, 'trainer_s') or ''} / {get(lb, 'trainer_s') or ''} |")
    text = "\n".join(md)
    print(text, flush=True)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".md", "w") as f:
        f.write(text + "\n")
    with open(out + ".json", "w") as f:
        json.dump(results, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", required=True, help="CIFAR-10 folder with train/ and test/")
    p.add_argument("--shared-weights", required=True, help="folder with the offline .h5 weights")
    p.add_argument("--work", default="/tmp/tfx-transfer-probe-bench")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--rows", default="peer,sgd,lbfgs", help="which of peer, sgd, lbfgs to run")
    p.add_argument("--out", default=os.path.join(HERE, "results", "probe_solver"))
    args = p.parse_args()
    install_weights(args.shared_weights)
    weights = os.path.join(args.shared_weights, WEIGHTS_FILE)
    results = {"datasets": {}}
    if os.path.exists(args.out + ".json"):  # rows of earlier invocations are kept, and marked
        with open(args.out + ".json") as f:
            results = json.load(f)
    rows = args.rows.split(",")
    for name in args.datasets.split(","):
        data = dataset_dir(name, args.cifar, args.work)
        entry = results["datasets"].setdefault(name, {"description": DATASETS[name][0]})
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for row in rows:
            print(f"== {name}: {row}", flush=True)
            entry[row] = (run_peer(name, data, args.work, weights) if row == "peer" else
                          run_pipeline(name, data, row, DATASETS[name][1], args.work))
            entry[row]["invocation"] = stamp
            write(results, args.out)


if __name__ == "__main__":
    main()
