"""Fixed costs of a small run: where the time of the bundled demo goes, against
the hand-written script on the same images, in one invocation.

Rows, run one after another in their own processes:
  peer      benchmarks/peer_probe.py on the demo images (tf.data + Keras
            features + scikit-learn), wall time of the whole process
  imports   python -c "import the pipeline's stack" (TF, TFX, TFMA, TFT, Beam)
  before    optional (--before-root): the same demo run on another checkout
  after     `tfx-transfer run --config examples/demo.yaml` on this checkout,
            with an empty numba cache (the first run on a machine); "before"
            keeps numba's default cache places, as its users had them
  warm      the same again (--repeat 2): the numba cache of `after` reused

Each pipeline row runs into a fresh output folder (no TFX cache) and is broken
into phases from its summary.json: per component (MLMD), the Trainer's report
(input set-up, model build, extraction, probe, export) and the projector's
timings (embedding, PCA, t-SNE, UMAP, metrics, files).

    python benchmarks/fixed_costs.py --weights ../shared/weights/mobilenet_v2_..._no_top.h5 \
        --work /tmp/fixed-costs [--before-root OLD_CHECKOUT] [--repeat 2]

Writes benchmarks/results/fixed_costs.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
IMPORTS = ("import tensorflow, tensorflow_transform, tensorflow_model_analysis, apache_beam; "
           "from tfx import v1")
COMPONENTS = ("ImageExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform",
              "Trainer", "Evaluator", "EmbeddingProjector", "Pusher")


def write_results(out, result, table, title, note=""):
    """Prints the table; writes <out>.json and <out>.md (with the command line)."""
    print(table)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(f"# {title}\n\n{note}```\n{' '.join(sys.argv)}\n```\n\n{table}\n")


def timed(cmd, log, env=None, cwd=REPO):
    start = time.time()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    wall = time.time() - start
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}... failed (rc {rc}); see {log}")
    return round(wall, 1)


def code_env(root, numba_cache):
    """Environment that imports tfx_transfer from `root` (its .dev shim when it
    has one: a second checkout of an editable install)."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    if numba_cache:
        env["NUMBA_CACHE_DIR"] = numba_cache
    shim = os.path.join(root, ".dev")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (shim if os.path.isdir(shim) else "", root) if p)
    return env


def phases(summary, wall):
    """name -> seconds, the pipeline run broken down as far as its records go."""
    t = summary["timings_s"]
    out = {"process wall": wall, "pipeline (runner.run)": t.get("total_wall")}
    out["CLI start-up, preflight, summary"] = round(wall - (t.get("total_wall") or 0), 1)
    comp = {c: t.get(c, 0.0) for c in COMPONENTS}
    out.update({f"component {c}": s for c, s in comp.items()})
    out["orchestration between components (MLMD, launcher)"] = round(
        (t.get("total_wall") or 0) - sum(t.get(k, 0.0) for k in t if k != "total_wall"), 1)
    tr = summary.get("training") or {}
    ph = {p["phase"]: p for p in tr.get("phases") or []}
    trainer = {
        "input pipelines, transform graph": tr.get("setup_s"),
        "model build (weights)": tr.get("build_model_s"),
        "feature extraction": ph.get("feature_extraction", {}).get("seconds"),
        "probe (solver or epochs)": ph.get("probe", {}).get("seconds"),
        "export (SavedModel, 5 signatures, warmup)": tr.get("export_s"),
    }
    known = sum(v for v in trainer.values() if v)
    if tr.get("run_fn_s"):
        trainer["traces and rest of run_fn"] = round(tr["run_fn_s"] - known, 1)
        trainer["TFX launcher around run_fn"] = round(comp["Trainer"] - tr["run_fn_s"], 1)
    out.update({f"Trainer: {k}": v for k, v in trainer.items()})
    pt = (summary.get("projector") or {}).get("timings_s") or {}
    for k in ("sample", "embed_after", "embed_before", "pca", "tsne", "umap", "metrics_before",
              "metrics_after", "write_outputs", "total"):
        if k in pt:
            out[f"Projector: {k}"] = pt[k]
    if pt.get("total") is not None:
        out["Projector: TFX launcher, imports"] = round(comp["EmbeddingProjector"] - pt["total"], 1)
    return out


def run_pipeline(name, root, weights, work, numba_cache, config):
    out = os.path.join(work, name)
    shutil.rmtree(out, ignore_errors=True)
    cli = os.path.join(os.path.dirname(sys.executable), "tfx-transfer")
    wall = timed([cli, "run", "--config", config, "--weights", weights, "--output", out],
                 os.path.join(work, f"{name}.log"), env=code_env(root, numba_cache))
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return {"row": name, "code": root, "wall_s": wall, "accuracy": summary["metrics"]["accuracy"],
            "phases": phases(summary, wall)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True, help="MobileNetV2 no-top .h5 (the peer and the demo)")
    p.add_argument("--work", required=True, help="scratch folder for the runs")
    p.add_argument("--config", default=os.path.join(REPO, "examples", "demo.yaml"))
    p.add_argument("--data", default=os.path.join(REPO, "data", "cifar10-sample"))
    p.add_argument("--before-root", help="another checkout to run the demo with, for 'before'")
    p.add_argument("--repeat", type=int, default=2, help="pipeline runs of this checkout (1 or 2)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "fixed_costs"))
    args = p.parse_args()
    weights = os.path.abspath(args.weights)
    os.makedirs(args.work, exist_ok=True)
    rows = []

    peer_json = os.path.join(args.work, "peer.json")
    wall = timed([sys.executable, os.path.join(HERE, "peer_probe.py"), "--data", args.data,
                  "--weights", weights, "--image-size", "96", "--out", peer_json],
                 os.path.join(args.work, "peer.log"), env=code_env(REPO, ""))
    with open(peer_json) as f:
        peer = json.load(f)
    rows.append({"row": "peer", "wall_s": wall, "accuracy": peer["accuracy"],
                 "phases": {"process wall": wall, "feature extraction": peer["extract_s"],
                            "logistic regression fit": peer["fit_s"]}})
    print(f"peer: {wall} s, accuracy {peer['accuracy']:.3f}", flush=True)
    wall = timed([sys.executable, "-c", IMPORTS], os.path.join(args.work, "imports.log"),
                 env=code_env(REPO, ""))
    rows.append({"row": "imports", "wall_s": wall, "phases": {"process wall": wall}})
    print(f"imports: {wall} s", flush=True)

    runs = [("after", REPO)] + [("warm", REPO)] * (args.repeat > 1)
    if args.before_root:
        runs.insert(0, ("before", os.path.abspath(args.before_root)))
    numba_cache = os.path.join(args.work, "numba_cache")
    shutil.rmtree(numba_cache, ignore_errors=True)
    for name, root in runs:
        # "before" keeps numba's default cache places (what its code had: the
        # few functions umap and pynndescent mark cache=True are cached there);
        # this checkout's rows start from an empty cache of their own.
        rows.append(run_pipeline(name, root, weights, args.work,
                                 None if name == "before" else numba_cache,
                                 os.path.abspath(args.config)))
        print(f"{name}: {rows[-1]['wall_s']} s, accuracy {rows[-1]['accuracy']:.3f}", flush=True)

    peer_wall = rows[0]["wall_s"]
    ratios = {r["row"]: round(r["wall_s"] / peer_wall, 2) for r in rows[2:]}
    result = {"machine": "2 cores, shared", "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "load_avg": os.getloadavg(), "config": args.config, "rows": rows,
              "pipeline_over_peer": ratios}
    names = list(dict.fromkeys(k for r in rows[2:] + rows[:2] for k in r["phases"]))
    lines = ["| phase (s) | " + " | ".join(r["row"] for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for k in names:
        cells = [r["phases"].get(k) for r in rows]
        lines.append(f"| {k} | " + " | ".join("" if c is None else f"{c:.1f}" for c in cells) + " |")
    lines.append("| accuracy | " + " | ".join(
        f"{r['accuracy'] * 100:.1f} %" if r.get("accuracy") is not None else "" for r in rows) + " |")
    lines.append("| wall / peer's | " + " | ".join(
        f"**{ratios[r['row']]}x**" if r["row"] in ratios else "" for r in rows) + " |")
    write_results(args.out, result, "\n".join(lines),
                  f"Fixed costs of the bundled demo ({result['time']}, load {result['load_avg']})")


if __name__ == "__main__":
    main()
