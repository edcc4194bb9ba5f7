"""Latency and throughput of the local gRPC server against the SavedModel in-process.

    .venv/bin/python benchmarks/serving_latency.py --model-base-path runs/demo/serving/classifier

For batch sizes 1, 8, 32 and 1 or 8 concurrent clients it measures, in the same
run, (a) calling the `serving_images` signature in this process and (b) the
same images through ServingClient -> `python -m tfx_transfer.pipeline.cli serve` (its own
process, over real gRPC on 127.0.0.1). The figure is the ratio of the p50s
(goal at batch 1: <= 1.5x). The two are measured cell by cell, alternately, so
that load from other jobs on the machine hits both alike. Without
--model-base-path it runs the tiny pipeline first (a few minutes).

Writes benchmarks/results/serving_latency.json and .md.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tfx_transfer.modules import contract, keras_compat  # noqa: E402,F401
import numpy as np  # noqa: E402

RESULTS = os.path.join(REPO, "benchmarks", "results")
SAMPLE = os.path.join(REPO, "data", "cifar10-sample", "test")


def sample_images():
    files = sorted(glob.glob(os.path.join(SAMPLE, "*", "*.jpg")))
    return [open(f, "rb").read() for f in files]


def tiny_model(workdir):
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from conftest import tiny_config
    from tfx_transfer.pipeline.runners import local as runners

    config = tiny_config(workdir)
    runners.run(config)
    return os.path.join(config.deploy.resolved_serving_dir, config.deploy.model_name)


def newest_version(base):
    versions = [int(v) for v in os.listdir(base) if v.isdigit() and
                os.path.exists(os.path.join(base, v, "saved_model.pb"))]
    if not versions:
        sys.exit(f"no <version>/saved_model.pb under {base}")
    return max(versions)


def run_cell(call, batches, clients, seconds, min_requests):
    """`clients` threads calling back to back for `seconds`: (latencies in s, wall s, images)."""
    latencies, images, t0 = [], [0], []
    lock = threading.Lock()
    # Each client warms its own session (a connection, for gRPC) before the clock starts.
    ready = threading.Barrier(clients, action=lambda: t0.append(time.perf_counter()))

    def worker(i):
        session = call()
        session(batches[i % len(batches)])
        ready.wait()
        n, mine, count = 0, [], 0
        while n < min_requests or time.perf_counter() < t0[0] + seconds:
            batch = batches[(i + n * clients) % len(batches)]
            t = time.perf_counter()
            session(batch)
            mine.append(time.perf_counter() - t)
            n, count = n + 1, count + len(batch)
        with lock:
            latencies.extend(mine)
            images[0] += count

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0[0], images[0]


def summary(latencies, wall, images):
    ms = np.array(latencies) * 1000
    return {"requests": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2),
            "images_per_s": round(images / wall, 1)}


def start_server(base, name, max_batch):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfx_transfer.pipeline.cli", "serve", "--model-base-path", base,
         "--model-name", name, "--port", "0", "--host", "127.0.0.1",
         "--max-batch-size", str(max_batch), "--max-workers", "16"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        sys.exit(f"server did not start: {line!r}")
    return proc, line.split()[-1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-base-path", help="<serving_dir>/<model_name> of a pushed model")
    ap.add_argument("--model-name", help="default: the base path's folder name")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--seconds", type=float, default=6.0, help="per cell and mode")
    ap.add_argument("--rounds", type=int, default=3, help="alternations per cell")
    ap.add_argument("--min-requests", type=int, default=5, help="per client and cell")
    ap.add_argument("--out", default=os.path.join(RESULTS, "serving_latency"))
    args = ap.parse_args(argv)

    import tensorflow as tf

    from tfx_transfer.serving.client import ServingClient

    base = args.model_base_path or tiny_model(tempfile.mkdtemp(prefix="serving_bench_"))
    base = os.path.abspath(base.rstrip("/"))
    name = args.model_name or os.path.basename(base)
    version = newest_version(base)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    client_counts = [int(c) for c in args.clients.split(",")]
    images = sample_images()

    fn = tf.saved_model.load(os.path.join(base, str(version))).signatures[contract.SERVING_IMAGES]

    def in_process():
        return lambda batch: fn(**{contract.IMAGES_INPUT: tf.constant(batch)})[contract.PROBABILITIES].numpy()

    server, address = start_server(base, name, max(batch_sizes))
    try:
        probe = ServingClient(address, name, timeout_s=300)
        probe.wait_until_available(300)
        probe.close()

        def served():
            client = ServingClient(address, name, timeout_s=120)
            return lambda batch: client.predict(batch, top_k=1, batch_size=len(batch))

        # The first calls pay for graph optimisation and connection set-up.
        for make in (in_process, served):
            call = make()
            for b in batch_sizes:
                call(images[:b])

        # The floor the transport alone puts under every request: an empty-ish RPC.
        with ServingClient(address, name, timeout_s=60) as client:
            rtt = []
            for _ in range(100):
                t = time.perf_counter()
                client.status()
                rtt.append(time.perf_counter() - t)
        rtt_ms = {"p50_ms": round(float(np.percentile(rtt, 50)) * 1000, 2),
                  "p99_ms": round(float(np.percentile(rtt, 99)) * 1000, 2)}
        print(f"GetModelStatus round trip (transport floor): {rtt_ms}", flush=True)
        load_before = os.getloadavg()
        print(" ".join(f"{h:>13}" for h in HEADER))
        rows = []
        for b in batch_sizes:
            batches = [images[i:i + b] for i in range(0, len(images) - b + 1, b)]
            for c in client_counts:
                row = {"batch_size": b, "clients": c}
                pooled = {"in_process": [[], 0.0, 0], "grpc": [[], 0.0, 0]}
                # Alternating short rounds: a burst of load from other jobs hits both modes.
                for _ in range(args.rounds):
                    for mode, make in (("in_process", in_process), ("grpc", served)):
                        lat, wall, n = run_cell(make, batches, c, args.seconds / args.rounds,
                                                args.min_requests)
                        pooled[mode][0] += lat
                        pooled[mode][1] += wall
                        pooled[mode][2] += n
                for mode, (lat, wall, n) in pooled.items():
                    row[mode] = summary(lat, wall, n)
                row["p50_ratio"] = round(row["grpc"]["p50_ms"] / row["in_process"]["p50_ms"], 2)
                row["p99_ratio"] = round(row["grpc"]["p99_ms"] / row["in_process"]["p99_ms"], 2)
                rows.append(row)
                print(format_row(row), flush=True)
        load_after = os.getloadavg()
    finally:
        server.terminate()
        server.wait(timeout=60)

    b1 = [r for r in rows if r["batch_size"] == 1]
    result = {
        "command": "python benchmarks/serving_latency.py " + " ".join(argv or sys.argv[1:]),
        "model_base_path": base, "model_version": version, "signature": contract.SERVING_IMAGES,
        "images": "data/cifar10-sample/test JPEGs (32x32)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1m_before": round(load_before[0], 2),
                    "load_avg_1m_after": round(load_after[0], 2)},
        "seconds_per_cell": args.seconds, "rounds": args.rounds,
        "get_model_status_rtt": rtt_ms, "rows": rows,
        "goal": "p50 at batch 1 <= 1.5x in-process",
        "goal_met": all(r["p50_ratio"] <= 1.5 for r in b1),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(result))
    print(f"\ngoal (p50 at batch 1 <= 1.5x in-process) met: {result['goal_met']}")
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


HEADER = ("batch", "clients", "in-proc p50", "in-proc p99", "in-proc img/s", "gRPC p50",
          "gRPC p99", "gRPC img/s", "p50 ratio", "p99 ratio")


def _cells(row):
    i, g = row["in_process"], row["grpc"]
    return (row["batch_size"], row["clients"], i["p50_ms"], i["p99_ms"], i["images_per_s"],
            g["p50_ms"], g["p99_ms"], g["images_per_s"], f"{row['p50_ratio']}x",
            f"{row['p99_ratio']}x")


def format_row(row):
    return " ".join(f"{str(v):>13}" for v in _cells(row))


def markdown(result):
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---:|" * len(HEADER)]
    lines += ["| " + " | ".join(map(str, _cells(r))) + " |" for r in result["rows"]]
    m = result["machine"]
    return ("Latencies in ms per request; img/s = images per second over all clients.\n\n"
            + "\n".join(lines) +
            f"\n\n{m['cpus']} CPUs, load average {m['load_avg_1m_before']} -> "
            f"{m['load_avg_1m_after']}; model version {result['model_version']}, "
            f"`{result['signature']}`; {result['seconds_per_cell']} s per cell and mode in "
            f"{result['rounds']} alternating rounds. GetModelStatus round trip (transport "
            f"floor): p50 {result['get_model_status_rtt']['p50_ms']} ms, "
            f"p99 {result['get_model_status_rtt']['p99_ms']} ms.\n"
            f"Command: `{result['command']}`\n")


if __name__ == "__main__":
    sys.exit(main())
