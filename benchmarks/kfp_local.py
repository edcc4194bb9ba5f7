"""The compiled pipeline run with `submit --local` against a LocalDagRunner run
of the same config, in one invocation: per-task seconds, accuracy, and what
each engine costs per task (one process or container per task).

    python benchmarks/kfp_local.py [--config FILE] [--engine process|podman|docker]...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from tfx_transfer.modules import keras_compat  # noqa: F401,E402  (Keras 2 before TensorFlow loads)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=os.path.join(REPO, "benchmarks", "results", "configs", "kfp_tiny.yaml"))
    p.add_argument("--engine", action="append", choices=["process", "podman", "docker"])
    p.add_argument("--image", default="tfx-transfer:dev")
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "kfp_local.json"))
    args = p.parse_args()
    engines = args.engine or ["process"]

    from tfx_transfer.pipeline.runners import kfp_local, kubeflow
    from tfx_transfer.pipeline.runners import local as runners
    from tfx_transfer.pipeline.config import RunConfig
    from tfx_transfer.pipeline.runners.summary import read_evaluation

    work = tempfile.mkdtemp(prefix="kfp_local_bench_")
    config = RunConfig.load(args.config, output=os.path.join(work, "local"))
    start = time.time()
    summary = runners.run(config)
    rows = {"LocalDagRunner": {"wall_s": round(time.time() - start, 1),
                               "tasks_s": summary["timings_s"],
                               "accuracy": summary["metrics"]["accuracy"]}}
    for engine in engines:
        package = os.path.join(work, f"{engine}.json")
        kubeflow.compile_pipeline(config, package, image=args.image,
                                  pipeline_root=os.path.join(work, engine), platform="local")
        start = time.time()
        result = kfp_local.run(package, [], engine=engine)
        tasks = result["tasks"]
        evaluation = read_evaluation(tasks["Evaluator"]["outputs"]["artifacts"]["evaluation"]["uri"],
                                     summary["classes"])
        rows[f"submit --local --engine {engine}"] = {
            "wall_s": round(time.time() - start, 1),
            "tasks_s": {n: t["seconds"] for n, t in tasks.items()},
            "accuracy": evaluation["accuracy"],
            "pushed": tasks["Pusher"]["outputs"]["artifacts"]["pushed_model"]["metadata"]
            .get("pushed_destination")}
    names = list(rows["LocalDagRunner"]["tasks_s"])
    for r in rows.values():
        names += [n for n in r["tasks_s"] if n not in names]
    head = ["task"] + list(rows)
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for n in names + ["(wall)", "accuracy"]:
        cells = []
        for r in rows.values():
            v = r["wall_s"] if n == "(wall)" else r["accuracy"] if n == "accuracy" \
                else r["tasks_s"].get(n)
            cells.append("" if v is None else f"{v:.4f}" if n == "accuracy" else f"{v:.1f}")
        print(f"| {n} | " + " | ".join(cells) + " |")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"config": args.config, "rows": rows,
                   "note": "2-core machine shared with five other jobs: compare within this run"},
                  f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
