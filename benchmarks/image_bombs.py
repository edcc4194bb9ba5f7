"""Decompression bombs against the image budget: pipeline peak memory and server cost.

Pipeline: the same small run (MobileNetV2 at 32 px, random init, 2 epochs, no
projector) on the bundled sample's 400 photos, each case in a fresh process:
  clean  the photos alone;
  bombs  the photos plus the PNG bomb (20000x20000, 388 KB) and the animated
         GIF bomb (400 frames of 2000x2000, 1.57 MB) of issue #12.
Peak RSS is ru_maxrss of the run's process (the local runner runs every
component in it). The ratio bombs/clean is what the issue bounds (<= 1.25).

Server: the model the bombs run pushed, served by ModelServer in this process;
Predict on serving_images with one good photo, each bomb, and four GIF bombs
at once: wall time to the answer, status code, and growth of the process's
peak RSS.

    python benchmarks/image_bombs.py [--data data/cifar10-sample] [--work /tmp/image_bombs]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from concurrent import futures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
RESULTS = os.path.join(REPO, "benchmarks", "results", "image_bombs.json")

RUN = """
import json, sys
from tfx_transfer.pipeline.config import RunConfig
from tfx_transfer.pipeline.runners import local as runners
config = RunConfig.from_dict(dict(
    data=sys.argv[1], output=sys.argv[2], backbone="MobileNetV2", weights="none", image_size=32,
    epochs=2, batch_size=32, projector=False, min_accuracy=0.0, max_accuracy_drop=1.0,
    bless_over_majority=False))
s = runners.run(config)
print("RESULT " + json.dumps({k: s.get(k) for k in (
    "peak_rss_mb", "pushed_model_dir", "train_examples", "eval_examples")} | {
    "skipped": [(f["path"].rsplit("/", 1)[-1], f["reason"]) for f in s["skipped_files"]],
    "accuracy": s["metrics"].get("accuracy"), "wall_s": s["timings_s"].get("total_wall")}))
"""


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(data: str, output: str) -> dict:
    shutil.rmtree(output, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-c", RUN, data, output], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": REPO})
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        sys.exit(f"run on {data} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def server_costs(model_base: str, bombs: dict, good: bytes) -> list:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfx_transfer.serving import signatures as sigs
    from tfx_transfer.serving.server import ModelServer

    rows = []
    with ModelServer(model_base, "classifier", port=0) as server:
        server.wait_until_available(120)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(server.address))

        def predict(data):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "classifier"
            request.model_spec.signature_name = sigs.SERVING_IMAGES
            request.inputs[sigs.IMAGES_INPUT].CopyFrom(sigs.string_tensor([data]))
            start = time.perf_counter()
            try:
                stub.Predict(request, timeout=120)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            return code, (time.perf_counter() - start) * 1000

        predict(good)  # first call pays the graph's tracing
        for name, data in [("good photo", good)] + list(bombs.items()):
            before, now = rss_peak_mb(), rss_now_mb()
            code, ms = predict(data)
            rows.append({"request": name, "bytes": len(data), "code": code, "ms": round(ms, 1),
                         "peak_rss_growth_mb": round(rss_peak_mb() - before, 1),
                         "rss_growth_mb": round(rss_now_mb() - now, 1)})
        before, now = rss_peak_mb(), rss_now_mb()
        start = time.perf_counter()
        with futures.ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(predict, [bombs["GIF bomb"]] * 4))
        rows.append({"request": "4 GIF bombs at once", "bytes": 4 * len(bombs["GIF bomb"]),
                     "code": ",".join(sorted({c for c, _ in codes})),
                     "ms": round((time.perf_counter() - start) * 1000, 1),
                     "peak_rss_growth_mb": round(rss_peak_mb() - before, 1),
                     "rss_growth_mb": round(rss_now_mb() - now, 1)})
    return rows


def main():
    import bad_images

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(REPO, "data", "cifar10-sample"))
    parser.add_argument("--work", default="/tmp/image_bombs")
    args = parser.parse_args()

    bombs = {"PNG bomb": bad_images.png_bomb(), "GIF bomb": bad_images.gif_bomb()}
    bombed = os.path.join(args.work, "data-bombs")
    shutil.rmtree(bombed, ignore_errors=True)
    shutil.copytree(args.data, bombed)
    train = os.path.join(bombed, "train")
    classes = sorted(os.listdir(train))
    for (name, data), cls in zip(bombs.items(), classes):
        with open(os.path.join(train, cls, name.replace(" ", "_").lower() + (
                ".png" if "PNG" in name else ".gif")), "wb") as f:
            f.write(data)

    clean = run_case(args.data, os.path.join(args.work, "run-clean"))
    bombed_run = run_case(bombed, os.path.join(args.work, "run-bombs"))
    ratio = bombed_run["peak_rss_mb"] / clean["peak_rss_mb"]
    good = open(next(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(args.data, "test"))
                     for f in fs), "rb").read()
    server = server_costs(os.path.dirname(bombed_run["pushed_model_dir"]), bombs, good)

    print(f"\nPipeline (peak RSS of the run's process, {platform.node()}):")
    print(f"{'case':8} {'peak RSS MB':>11} {'wall s':>7} {'train/eval':>10} {'accuracy':>8}  skipped")
    for name, r in (("clean", clean), ("bombs", bombed_run)):
        print(f"{name:8} {r['peak_rss_mb']:>11.0f} {r['wall_s']:>7.0f} "
              f"{r['train_examples']}/{r['eval_examples']:>4} {r['accuracy']:>8.3f}  "
              + "; ".join(f"{n}: {why}" for n, why in r["skipped"]))
    print(f"bombs / clean peak RSS: {ratio:.3f} (issue #12 bound: 1.25)")
    print("\nServer (Predict on serving_images, in-process ModelServer):")
    print(f"{'request':22} {'bytes':>9} {'code':20} {'ms':>8} {'RSS +MB':>8} {'peak RSS +MB':>12}")
    for r in server:
        print(f"{r['request']:22} {r['bytes']:>9} {r['code']:20} {r['ms']:>8.1f} "
              f"{r['rss_growth_mb']:>8.1f} {r['peak_rss_growth_mb']:>12.1f}")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"machine": platform.node(), "cpus": os.cpu_count(),
                   "note": "machine shared with other jobs; ratios within one invocation",
                   "pipeline": {"clean": clean, "bombs": bombed_run,
                                "peak_rss_ratio": round(ratio, 3)},
                   "server": server}, f, indent=1)
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
