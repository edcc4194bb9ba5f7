"""The compiled pipeline run with `submit --local` against a LocalDagRunner run
of the same config, in one invocation: per-task seconds, accuracy, and what
each engine costs per task (one process or container per task).

    python benchmarks/kfp_local.py [--config FILE] [--engine process|podman|docker]...
        [--tfjob-workers N] [--start-overhead]

--start-overhead also times one `python -c pass` in the image three ways: a
process, `podman run IMAGE` (vfs copies the image for the container) and
podman on the mounted image under an overlay (what submit --local does).
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
    p.add_argument("--tfjob-workers", type=int, default=0,
                   help="compile with the Trainer as a TFJob of N workers")
    p.add_argument("--start-overhead", action="store_true")
    args = p.parse_args()
    engines = args.engine or ["process"]
    overhead = start_overhead(args.image) if args.start_overhead else {}

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
    compiled = config.replace(tfjob_workers=args.tfjob_workers, image=args.image)
    for engine in engines:
        package = os.path.join(work, f"{engine}.json")
        kubeflow.compile_pipeline(compiled, package, image=args.image,
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
    for how, seconds in overhead.items():
        print(f"start overhead, {how}: {seconds:.1f} s")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"config": args.config, "tfjob_workers": args.tfjob_workers, "rows": rows,
                   "start_overhead_s": overhead,
                   "note": "2-core machine shared with other helpers' jobs: compare within this run"},
                  f, indent=1)
    return 0


def start_overhead(image: str) -> dict:
    """Seconds for `python -c pass`: as a process, and in the image with podman
    both ways."""
    import subprocess

    from tfx_transfer.pipeline.runners import kfp_local

    def timed(argv, env=None):
        start = time.time()
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
        return round(time.time() - start, 2)

    out = {"process": timed([sys.executable, "-c", "pass"])}
    env = kfp_local._engine_env("podman")
    containers = kfp_local.Containers("podman", env)
    try:
        out["podman, mounted image + overlay"] = timed(
            containers.command(image, ["python", "-c", "pass"], [], "/tmp", {}, "bench-overlay"), env)
        out["podman run IMAGE (vfs copy)"] = timed(
            containers.base + ["run", "--rm", "--network", "none", image, "python", "-c", "pass"], env)
    finally:
        containers.close()
    return out


if __name__ == "__main__":
    sys.exit(main())
