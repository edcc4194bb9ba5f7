"""Before/after of `tfx-transfer run` as a user meets it, both sides in one invocation.

For each mistake of issue #13: seconds until the CLI rejects it, its exit
code, and how many lines it printed. With --full-run DATA: lines printed by
a whole run piped (stdout and stderr together) and its wall time.
"before" and "after" are git commits (default: the commit before this work,
and HEAD), each exported to a temporary folder and run with the same
interpreter.

    python benchmarks/cli_ux.py [--baseline COMMIT] [--full-run /tmp/data300]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "data", "cifar10-sample")
WEIGHTS = os.path.join(os.path.dirname(REPO), "shared", "weights")


def mistakes(tmp: str):
    """(name, flags) of each mistake; every case writes (if at all) under tmp/out."""
    def touch(path, text="x"):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    os.makedirs(os.path.join(tmp, "empty"), exist_ok=True)
    touch(os.path.join(tmp, "one", "cat", "a.jpg"))
    touch(os.path.join(tmp, "flat", "a.jpg"))
    touch(os.path.join(tmp, "a_file"))
    touch(os.path.join(tmp, "bad.yaml"), "epochs: [1\n")
    touch(os.path.join(tmp, "notweights.h5"), "not a weights file")
    out = ["--output", os.path.join(tmp, "out")]
    data = ["--data", SAMPLE] + out
    cases = [
        ("missing data folder", ["--data", os.path.join(tmp, "missing")] + out),
        ("empty data folder", ["--data", os.path.join(tmp, "empty")] + out),
        ("one class", ["--data", os.path.join(tmp, "one")] + out),
        ("images without class folders", ["--data", os.path.join(tmp, "flat")] + out),
        ("unknown backbone", data + ["--backbone", "MobilNetV2"]),
        ("unknown field (--config)", data + ["--config", _yaml(tmp, "epoch: 3\n")]),
        ("out-of-range value", data + ["--epochs", "0"]),
        ("bad YAML", data + ["--config", os.path.join(tmp, "bad.yaml")]),
        ("weights: not a weights file", data + ["--weights", os.path.join(tmp, "notweights.h5")]),
        ("output is a file", ["--data", SAMPLE, "--output", os.path.join(tmp, "a_file")]),
    ]
    top = os.path.join(WEIGHTS, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5")
    v1 = os.path.join(WEIGHTS, "mobilenet_1_0_224_tf_no_top.h5")
    if os.path.exists(top):
        cases.append(("weights: file with the top", data + ["--weights", top]))
    if os.path.exists(v1):
        cases.append(("weights: another backbone's", data + ["--weights", v1]))
    return cases


def _yaml(tmp, text):
    path = os.path.join(tmp, f"cfg{abs(hash(text))}.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def _cli_in(tree: str) -> str:
    """The CLI module of an unpacked checkout: the folders were top-level
    packages before the tfx_transfer package (which finds them in a checkout)."""
    if os.path.isfile(os.path.join(tree, "tfx_transfer", "__init__.py")):
        return "tfx_transfer.pipeline.cli"
    return "pipeline.cli"


def run_cli(tree: str, flags, timeout: float):
    env = dict(os.environ, PYTHONPATH=tree, TF_USE_LEGACY_KERAS="1")
    start = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", _cli_in(tree), "run", *flags], cwd=tree,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)
        rc, text = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as e:
        rc, text = "timeout", (e.stdout or b"").decode(errors="replace")
    lines = text.splitlines()
    last = next((l for l in reversed(lines) if l.strip()), "")
    return {"seconds": round(time.time() - start, 2), "rc": rc, "lines": len(lines),
            "last_line": last[:300]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="fbdbca3", help="commit measured as 'before'")
    ap.add_argument("--after", default="HEAD", help="commit measured as 'after'")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per command")
    ap.add_argument("--full-run", metavar="DATA", help="also time a whole run on DATA, both sides")
    ap.add_argument("--before-cases", default="",
                    help="comma-separated mistake names measured on 'before' too (default: all); "
                         "the old CLI imported TFX first, so every case cost about the same")
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "cli_ux.json"))
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="cli_ux_")
    trees = {}
    for side, commit in (("before", args.baseline), ("after", args.after)):
        trees[side] = os.path.join(work, side)
        os.makedirs(trees[side])
        subprocess.run(f"git -C {REPO} archive {commit} | tar -x -C {trees[side]}", shell=True,
                       check=True)
    before, after = trees["before"], trees["after"]
    results = {"baseline": args.baseline, "after": subprocess.run(
        ["git", "-C", REPO, "rev-parse", "--short", args.after], capture_output=True,
        text=True).stdout.strip(), "mistakes": [], "full_run": None}
    print(f"{'mistake':32} {'before s':>9} {'lines':>6} {'rc':>4}   {'after s':>8} {'lines':>6} {'rc':>4}")
    for side_tmp in ("b", "a"):
        os.makedirs(os.path.join(work, side_tmp))
    cases_b, cases_a = mistakes(os.path.join(work, "b")), mistakes(os.path.join(work, "a"))
    for (name, flags_b), (_, flags_a) in zip(cases_b, cases_a):
        wanted = not args.before_cases or name in args.before_cases.split(",")
        b = run_cli(before, flags_b, args.timeout) if wanted else \
            {"seconds": float("nan"), "lines": 0, "rc": "-", "last_line": "not measured"}
        a = run_cli(after, flags_a, args.timeout)
        a["wrote_output"] = os.path.exists(os.path.join(work, "a", "out"))
        results["mistakes"].append({"mistake": name, "before": b, "after": a})
        print(f"{name:32} {b['seconds']:>9.2f} {b['lines']:>6} {b['rc']!s:>4}   "
              f"{a['seconds']:>8.2f} {a['lines']:>6} {a['rc']!s:>4}", flush=True)
        print(f"    after: {a['last_line']}", flush=True)
    if args.full_run:
        w = os.path.join(WEIGHTS, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
        flags = ["--data", args.full_run, "--backbone", "MobileNetV2", "--image-size", "96",
                 "--epochs", "5", "--batch-size", "32",
                 "--weights", w if os.path.exists(w) else "none"]
        full = {}
        for side, tree in (("before", before), ("after", after)):
            full[side] = run_cli(tree, flags + ["--output", os.path.join(work, f"run_{side}")],
                                 args.timeout * 3)
            print(f"full run {side}: {full[side]['lines']} lines, {full[side]['seconds']} s, "
                  f"rc {full[side]['rc']}", flush=True)
        results["full_run"] = {"flags": flags, **full}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
