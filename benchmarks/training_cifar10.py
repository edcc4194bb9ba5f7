"""Training benchmark on real CIFAR-10 through the real pipeline.

Every row is one `tfx-transfer run` in its own process (so its peak memory is
its own), all sharing one output dir, so ExampleGen/StatisticsGen/SchemaGen
run once and Transform once per input size (TFX caching). Accuracy is TFMA's
on the 10,000 test images.

    python benchmarks/training_cifar10.py --data CIFAR_DIR --shared-weights ../shared/weights

Writes benchmarks/results/training_cifar10.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tfx_transfer.modules import contract  # noqa: E402

ROWS = {
    # name: (description, config overrides)
    "probe_cached_96": ("linear probe, cached features, 10 epochs",
                        # the epoch probe: 10 epochs against the frozen row's 10
                        dict(mode="linear_probe", image_size=96, cache_features=True,
                             probe_solver="sgd")),
    "probe_frozen_96": ("linear probe, frozen graph (backbone every epoch), 10 epochs",
                        dict(mode="linear_probe", image_size=96, cache_features=False)),
    "lp_ft_96": ("probe 10 epochs, then fine-tune top 2 groups for 2 epochs",
                 dict(mode="lp_ft", image_size=96, fine_tune_epochs=2, unfreeze_groups=2)),
    "probe_cached_32": ("linear probe at native 32 px", dict(mode="linear_probe", image_size=32)),
    "probe_cached_160": ("linear probe at 160 px", dict(mode="linear_probe", image_size=160)),
}


def install_weights(shared_dir: str):
    """Copies the offline ImageNet weight files where tf_keras looks for them."""
    cache = os.path.join(os.path.expanduser("~"), ".keras", "models")
    os.makedirs(cache, exist_ok=True)
    for f in os.listdir(shared_dir):
        if f.endswith(".h5") and not os.path.exists(os.path.join(cache, f)):
            shutil.copy(os.path.join(shared_dir, f), cache)


def run_config(cfg, out_dir, name):
    """`tfx-transfer run` on cfg in its own process; (summary, wall seconds).
    Its config and log go to out_dir/{configs,logs}/<name>.*"""
    path = os.path.join(out_dir, "configs", f"{name}.yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    log = os.path.join(out_dir, "logs", f"{name}.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    start = time.time()
    with open(log, "w") as f:
        rc = subprocess.call([os.path.join(os.path.dirname(sys.executable), "tfx-transfer"), "run",
                              "--config", path], stdout=f, stderr=subprocess.STDOUT)
    wall = time.time() - start
    if rc != 0:
        raise SystemExit(f"row {name} failed (rc {rc}); see {log}")
    with open(os.path.join(cfg["output"], contract.SUMMARY_FILE)) as f:
        return json.load(f), wall


def run_row(name, overrides, base, out_dir):
    cfg = dict(base, **overrides, model_name=name.replace("_", "-"))
    summary, wall = run_config(cfg, out_dir, name)
    shutil.copy(os.path.join(cfg["output"], contract.SUMMARY_FILE), os.path.join(out_dir, "logs", f"{name}.summary.json"))
    phases = {p["phase"]: p for p in summary["training"]["phases"]}
    return {
        "row": name, "description": ROWS[name][0], **overrides,
        "accuracy": summary["metrics"]["accuracy"], "top5_accuracy": summary["metrics"].get("top5_accuracy"),
        "macro_f1": summary["metrics"].get("macro_f1"),
        "trainer_s": summary["timings_s"]["Trainer"], "evaluator_s": summary["timings_s"]["Evaluator"],
        "run_wall_s": round(wall, 1), "peak_rss_mb": summary["peak_rss_mb"],
        "extract_img_s": phases.get("feature_extraction", {}).get("images_per_s"),
        "probe_s": phases.get("probe", {}).get("seconds"),
        "probe_img_s": phases.get("probe", {}).get("images_per_s"),
        "fine_tune_s": phases.get("fine_tune", {}).get("seconds"),
        "fine_tune_img_s": phases.get("fine_tune", {}).get("images_per_s"),
        "component_states": summary["component_states"],
        "timings_s": summary["timings_s"],
    }


def write_outputs(results, peer, out):
    rows = results["rows"]
    md = ["| row | accuracy | top-5 | Trainer s | extract img/s | probe s | fine-tune s | peak RSS MB |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['row']} | {r['accuracy']:.4f} | {r['top5_accuracy']:.4f} | {r['trainer_s']} | "
                  f"{r['extract_img_s'] or ''} | {r['probe_s'] or ''} | {r['fine_tune_s'] or ''} | "
                  f"{r['peak_rss_mb']} |")
    if peer:
        md.append(f"| peer (sklearn LR) | {peer['accuracy']:.4f} | | {peer['extract_s'] + peer['fit_s']:.1f} | "
                  f"{peer['extract_img_s']} | | | {peer['peak_rss_mb']} |")
    derived = results.get("derived", {})
    md.append("")
    for k, v in derived.items():
        md.append(f"- {k}: {v}")
    text = "\n".join(md)
    print(text)
    with open(out + ".md", "w") as f:
        f.write(text + "\n")
    with open(out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["trainer_s"], r["accuracy"], s=50)
        ax.annotate(r["row"], (r["trainer_s"], r["accuracy"]), fontsize=8, xytext=(4, 3),
                    textcoords="offset points")
    if peer:
        ax.scatter(peer["extract_s"] + peer["fit_s"], peer["accuracy"], marker="x", s=60, c="k")
        ax.annotate("peer (sklearn)", (peer["extract_s"] + peer["fit_s"], peer["accuracy"]),
                    fontsize=8, xytext=(4, -10), textcoords="offset points")
    ax.set_xlabel("training wall time (s): Trainer component, or peer extract + fit")
    ax.set_ylabel("CIFAR-10 test accuracy")
    ax.set_title("MobileNetV2 (ImageNet weights) on CIFAR-10, 2 CPU cores")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=120)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="CIFAR-10 folder with train/ and test/")
    p.add_argument("--shared-weights", required=True, help="folder with the offline .h5 weights")
    p.add_argument("--output", default="/tmp/tfx-transfer-bench", help="run dir (shared for caching)")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--peer", help="peer_probe.py JSON result to include")
    p.add_argument("--out", default=os.path.join(HERE, "results", "training_cifar10"))
    args = p.parse_args()
    install_weights(args.shared_weights)
    base = dict(data=args.data, backbone="MobileNetV2", weights="imagenet", epochs=args.epochs,
                batch_size=128, output=args.output, projector=False, max_accuracy_drop=1.0)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    previous = {}
    if os.path.exists(args.out + ".json"):
        previous = {r["row"]: r for r in json.load(open(args.out + ".json"))["rows"]}
    rows = []
    for name in args.rows.split(","):
        print(f"== {name}: {ROWS[name][0]}", flush=True)
        rows.append(run_row(name, ROWS[name][1], base, os.path.dirname(args.out)))
        previous[name] = rows[-1]
        results = {"rows": list(previous.values())}
        write_outputs(results, None, args.out)  # partial results survive a failure
    by = previous
    derived = {}
    if "probe_cached_96" in by and "probe_frozen_96" in by:
        c, f = by["probe_cached_96"], by["probe_frozen_96"]
        derived["frozen/cached Trainer wall-time ratio"] = round(f["trainer_s"] / c["trainer_s"], 2)
        derived["cached - frozen accuracy (pt)"] = round(100 * (c["accuracy"] - f["accuracy"]), 2)
    if "probe_cached_96" in by and "lp_ft_96" in by:
        derived["lp_ft - linear_probe accuracy gain at 96 px (pt)"] = round(
            100 * (by["lp_ft_96"]["accuracy"] - by["probe_cached_96"]["accuracy"]), 2)
    peer = json.load(open(args.peer)) if args.peer and os.path.exists(args.peer) else None
    if peer and "probe_cached_96" in by:
        derived["our probe - peer accuracy at 96 px (pt)"] = round(
            100 * (by["probe_cached_96"]["accuracy"] - peer["accuracy"]), 2)
    write_outputs({"rows": list(by.values()), "peer": peer, "derived": derived}, peer, args.out)


if __name__ == "__main__":
    main()
