"""compare: one pipeline run per (backbone, mode, unfreeze depth,
image size), a leaderboard of the results.

All runs share one pipeline name, pipeline root and MLMD database, so TFX's
cache reuses ExampleGen, statistics, schema and (per backbone and size)
Transform across them; only Trainer, Evaluator and what follows rerun.
"""
from __future__ import annotations

import csv
import itertools
import json
import logging
import os
from typing import Any, Dict, List, Optional

from tfx_transfer.modules import contract, progress_events
from tfx_transfer.pipeline.config import RunConfig

log = logging.getLogger("tfx_transfer.compare")

COLUMNS = ["backbone", "mode", "unfreeze_groups", "image_size", "accuracy", "top5_accuracy",
           "macro_f1", "train_s", "params", "trainable_params", "extract_img_s", "train_img_s",
           "silhouette_before", "silhouette_after", "knn_before", "knn_after", "blessed"]


def combinations(base: RunConfig, backbones: List[str], modes: List[str],
                 unfreeze: List[int], sizes: List[Optional[int]]) -> List[RunConfig]:
    configs = []
    for backbone, mode, size in itertools.product(backbones or [base.model.backbone],
                                                  modes or [base.training.mode],
                                                  sizes or [base.model.image_size]):
        depths = (unfreeze or [base.training.unfreeze_groups]) if mode != "linear_probe" else [0]
        for depth in depths:
            name = f"{backbone}-{mode}" + (f"-u{depth}" if mode != "linear_probe" else "") + \
                (f"-{size}px" if sizes else "")
            # image_size None: each backbone at its own default size.
            configs.append(base.replace(
                backbone=backbone, mode=mode, image_size=size if sizes else None,
                unfreeze_groups=depth if depth else base.training.unfreeze_groups,
                model_name=name.lower(),
                # The leaderboard ranks models; it must not refuse to push one
                # because another combination was blessed before it.
                max_accuracy_drop=1.0))
    return configs


def row(config: RunConfig, summary: Dict[str, Any]) -> Dict[str, Any]:
    metrics = summary.get("metrics", {})
    training = summary.get("training") or {}
    phases = {p["phase"]: p for p in training.get("phases") or []}
    train_phases = [p for p in phases.values() if p["phase"] != "feature_extraction"]
    projector = summary.get("projector") or {}
    r = {
        "backbone": config.model.backbone, "mode": config.training.mode,
        "unfreeze_groups": (config.training.unfreeze_groups
                            if config.training.mode != "linear_probe" else 0),
        "image_size": summary.get("image_size"),
        "accuracy": metrics.get("accuracy"), "top5_accuracy": metrics.get("top5_accuracy"),
        "macro_f1": metrics.get("macro_f1"),
        # The training work (feature extraction + epochs) from the Trainer's own
        # report: a Trainer that TFX took from the cache has no wall time of
        # its own in this run, but its report still says what training cost.
        "train_s": round(sum(p["seconds"] for p in phases.values()), 1) if phases
        else summary.get("timings_s", {}).get("Trainer"),
        "params": training.get("params"), "trainable_params": training.get("trainable_params"),
        "extract_img_s": phases.get("feature_extraction", {}).get("images_per_s"),
        "train_img_s": train_phases[-1]["images_per_s"] if train_phases else None,
        "blessed": summary.get("blessed"),
    }
    for stage in ("before", "after"):
        numbers = projector.get(stage) or {}
        r[f"silhouette_{stage}"] = numbers.get("silhouette")
        r[f"knn_{stage}"] = numbers.get("knn_accuracy")
    return r


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4f}" if v <= 1 else f"{v:.1f}"
    return "" if v is None else str(v)


def write_leaderboard(rows: List[Dict[str, Any]], out_dir: str) -> Dict[str, str]:
    rows = sorted(rows, key=lambda r: -(r.get("accuracy") or 0))
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"leaderboard.{k}") for k in ("md", "csv", "json", "png")}
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with open(paths["md"], "w") as f:
        f.write("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
        for r in rows:
            f.write("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |\n")
    with open(paths["json"], "w") as f:
        json.dump(rows, f, indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r.get("accuracy") is None or r.get("train_s") is None:
            continue
        ax.scatter(r["train_s"], r["accuracy"], s=40)
        label = f"{r['backbone']} {r['mode']}" + (f" u{r['unfreeze_groups']}" if r["unfreeze_groups"] else "") \
            + (f" {r['image_size']}px" if r.get("image_size") else "")
        ax.annotate(label, (r["train_s"], r["accuracy"]), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")
    ax.set_xlabel("training time (s): feature extraction + epochs")
    ax.set_ylabel("eval accuracy (TFMA)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    return paths


def compare(base: RunConfig, backbones: List[str], modes: List[str], unfreeze: List[int],
            sizes: List[Optional[int]]) -> List[Dict[str, Any]]:
    from tfx_transfer.modules import backbones as registry
    from tfx_transfer.pipeline.runners import local

    configs = combinations(base, backbones, modes, unfreeze, sizes)
    for c in configs:  # every weights file checked before the first run starts
        registry.resolve_weights(c.model.backbone, c.model.image_size, c.model.weights)
    rows = []
    for i, config in enumerate(configs, 1):
        log.info("compare %d/%d: %s", i, len(configs), config.deploy.model_name)
        progress_events.emit(f"run {i}/{len(configs)}: {config.deploy.model_name}", 0,
                             heading=True)
        summary = local.run(config)
        run_dir = os.path.join(base.deploy.output, "runs", config.deploy.model_name)
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, contract.SUMMARY_FILE), "w") as f:
            json.dump(summary, f, indent=1)
        rows.append(row(config, summary))
        write_leaderboard(rows, base.deploy.output)  # partial results survive a later failure
    return rows
