"""Load time, first-request latency with and without the warmup file, and REST vs gRPC.

    .venv/bin/python benchmarks/serving_startup.py --model-dir runs/demo/serving/classifier/<v>

(1) Load and first requests: each trial is a fresh process (TF's caches are per
process, as a restarted TF Serving's are) that loads the version with
serving/server.py `load_version`, then times its first requests: `serving_images`
at batch 1 (a real JPEG), again at batch 1, then batch 32 twice. Warmup modes:
`none` (what TF Serving does without a warmup file), `file` (the version's
assets.extra/tf_serving_warmup_requests replayed, as TF Serving does), `png`
(the local server's former warmup: one 8x8 PNG per signature). Loaders:
`session` (the server's, as TF Serving: a Session on the MetaGraph) and
`object` (the former one, tf.saved_model.load). Modes alternate trial by
trial, so load from other jobs hits them alike.
(2) REST vs gRPC: one `python -m tfx_transfer.pipeline.cli serve --rest-api-port 0` process;
ServingClient and RestClient alternate rounds of `predict` at batch 1 and 32;
p50 per transport and their ratio. Also the wall time from starting `serve` to
its ready line (ports open).

Writes benchmarks/results/serving_startup.{json,md}.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
RESULTS = os.path.join(REPO, "benchmarks", "results")
SAMPLE = os.path.join(REPO, "data", "cifar10-sample", "test")
# (warmup, loader): the warmup modes on the server's loader, and the former loader.
MODES = (("none", "session"), ("file", "session"), ("png", "session"), ("file", "object"))

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from tfx_transfer.modules import keras_compat
import numpy as np
import tensorflow as tf
from tfx_transfer.serving import server
imported = time.perf_counter() - t0
path, mode, loader, images = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
jpegs = [open(f, "rb").read() for f in images]
t = time.perf_counter()
loaded = server.load_version(path, 1, warmup=False, loader=loader)
load_version = time.perf_counter() - t
t = time.perf_counter()
if mode != "none":
    server._warm_up(loaded, use_file=(mode == "file"))
warmup = time.perf_counter() - t
def req(batch):
    t = time.perf_counter()
    loaded.run("serving_images", {"images": np.array(batch, dtype=object)})
    return time.perf_counter() - t
first_b1 = req(jpegs[:1])
second_b1 = req(jpegs[1:2])
first_b32 = req(jpegs[:32])
second_b32 = req(jpegs[32:64])
print(json.dumps({"import_s": imported, "load_version_s": load_version,
                  "warmup_s": warmup,
                  "first_b1_ms": first_b1 * 1e3, "second_b1_ms": second_b1 * 1e3,
                  "first_b32_ms": first_b32 * 1e3, "second_b32_ms": second_b32 * 1e3}))
"""


def images():
    files = sorted(glob.glob(os.path.join(SAMPLE, "*", "*.jpg")))
    if len(files) < 64:
        sys.exit(f"need 64 JPEGs under {SAMPLE}")
    return files


def load_trials(model_dir, trials, files):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    runs = {f"{w}/{l}": [] for w, l in MODES}
    for i in range(trials):
        for warm, loader in MODES:
            mode = f"{warm}/{loader}"
            out = subprocess.run([sys.executable, "-c", CHILD, model_dir, warm, loader,
                                  json.dumps(files)],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            if out.returncode:
                sys.exit(f"trial failed ({mode}):\n{out.stderr[-3000:]}")
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"trial {i + 1} {mode}: {runs[mode][-1]}", flush=True)
    return {m: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
            for m, rs in runs.items()}


def transport(model_dir, rounds, per_round, files):
    from tfx_transfer.serving.client import ServingClient
    from tfx_transfer.serving.rest_client import RestClient

    base = tempfile.mkdtemp(prefix="serving_startup_")
    os.symlink(os.path.abspath(model_dir), os.path.join(base, "1"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfx_transfer.pipeline.cli", "serve", "--model-base-path", base,
         "--model-name", "m", "--port", "0", "--rest-api-port", "0", "--max-batch-size", "64"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        grpc_line, rest_line = proc.stdout.readline(), proc.stdout.readline()
        ready_s = time.perf_counter() - start
        if not rest_line.startswith("REST API on "):
            sys.exit(f"server did not start: {grpc_line!r} {rest_line!r}")
        jpegs = [open(f, "rb").read() for f in files]
        clients = {"grpc": ServingClient(grpc_line.split()[-1], "m", timeout_s=300),
                   "rest": RestClient(rest_line.split()[-1], "m", timeout_s=300)}
        rows = []
        for batch in (1, 32):
            lat = {k: [] for k in clients}
            for c in clients.values():  # connection set-up out of the clock
                c.predict(jpegs[:batch], top_k=1, batch_size=batch)
            for r in range(rounds):
                for name, c in clients.items():
                    for i in range(per_round):
                        chunk = [jpegs[(r * per_round + i + j) % len(jpegs)] for j in range(batch)]
                        t = time.perf_counter()
                        c.predict(chunk, top_k=1, batch_size=batch)
                        lat[name].append((time.perf_counter() - t) * 1e3)
            row = {"batch_size": batch, "requests_each": len(lat["grpc"])}
            for name, values in lat.items():
                row[f"{name}_p50_ms"] = round(statistics.median(values), 2)
            row["rest_over_grpc_p50"] = round(row["rest_p50_ms"] / row["grpc_p50_ms"], 2)
            rows.append(row)
            print(row, flush=True)
        for c in clients.values():
            c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(base)
    return round(ready_s, 2), rows


def markdown(r):
    lines = [f"Model: `{r['model_dir']}` ({r['model_note']}); {r['trials']} trials per mode, "
             "medians; each trial a fresh process.", "",
             "| warmup / loader | load s | warmup s | 1st b1 ms | "
             "2nd b1 ms | 1st b32 ms | 2nd b32 ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for mode, m in r["load"].items():
        lines.append(f"| {mode} | {m['load_version_s']} | "
                     f"{m['warmup_s']} | {m['first_b1_ms']} | {m['second_b1_ms']} | "
                     f"{m['first_b32_ms']} | {m['second_b32_ms']} |")
    lines += ["", f"`serve` start to ready line (ports open, warmup file replayed): "
              f"{r['serve_ready_s']} s", "",
              "| batch | gRPC p50 ms | REST p50 ms | REST / gRPC |", "|---:|---:|---:|---:|"]
    for row in r["transport"]:
        lines.append(f"| {row['batch_size']} | {row['grpc_p50_ms']} | {row['rest_p50_ms']} | "
                     f"{row['rest_over_grpc_p50']}x |")
    m = r["machine"]
    lines += ["", f"{m['cpus']} CPUs, load average {m['load_avg_1m_before']} -> "
              f"{m['load_avg_1m_after']} (shared machine).", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True, help="one pushed version: <base>/<version>")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--note", default="", help="what the model is, for the table")
    ap.add_argument("--out", default=os.path.join(RESULTS, "serving_startup"))
    args = ap.parse_args(argv)

    from tfx_transfer.modules import keras_compat  # noqa: F401

    files = images()
    load_before = os.getloadavg()
    from tfx_transfer.modules import contract
    from tfx_transfer.serving import warmup

    model_dir = os.path.abspath(args.model_dir)
    if not os.path.exists(warmup.warmup_path(model_dir)):
        sys.exit(f"{model_dir} has no {contract.WARMUP_DIR}/{contract.WARMUP_FILE}: export it with "
                 "this version of modules/trainer.py")
    load = load_trials(model_dir, args.trials, files)
    ready_s, rows = transport(model_dir, args.rounds, args.per_round, files)
    result = {
        "command": "python benchmarks/serving_startup.py " + " ".join(argv or sys.argv[1:]),
        "model_dir": args.model_dir, "model_note": args.note,
        "trials": args.trials, "load": load,
        "serve_ready_s": ready_s, "transport": rows,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1m_before": round(load_before[0], 2),
                    "load_avg_1m_after": round(os.getloadavg()[0], 2)},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
