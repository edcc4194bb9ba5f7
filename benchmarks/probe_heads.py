"""Head solvers on the same cached backbone features, in one process.

Takes the feature cache that benchmarks/peer_probe.py writes (--features-cache:
MobileNetV2 pooled features of CIFAR-10 train/test, in class-folder then
file-name order) and trains the linear head three ways on identical inputs:

  peer    scikit-learn LogisticRegression(max_iter=1000), as peer_probe.py
  sgd     the Trainer's epoch path (modules/trainer.py: build_head,
          compile_model with its AdamW + cosine schedule, dropout 0.2,
          shuffled minibatches), i.e. the probe before probe_solver
  lbfgs   modules/probe_solver.solve (L2 chosen on held-out folds)

so the differences are the solvers alone and the timings compare within
one run. Subsets: `cifar50` = the first 50 files of each train class (500),
`cifar10` = all 50,000; both scored on the 10,000 test images.

    python benchmarks/probe_heads.py --features /tmp/peer_full96.npz --subsets cifar50,cifar10
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from tfx_transfer.modules import keras_compat  # noqa: F401,E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402  (imported here, not inside the sgd row's timing)

SUBSETS = {  # name: (train images per class or None for all, trainer settings)
    "cifar50": (50, dict(epochs=20, batch_size=32)),
    "cifar10": (None, dict(epochs=10, batch_size=128)),
}


def subset(y: np.ndarray, per_class):
    if per_class is None:
        return np.arange(len(y))
    return np.concatenate([np.flatnonzero(y == c)[:per_class] for c in np.unique(y)])


def peer(x, y, xt, yt):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=1000).fit(x, y)
    return {"accuracy": float((clf.predict(xt) == yt).mean()), "iterations": int(clf.n_iter_[0])}


def sgd(x, y, xt, yt, settings):
    from tfx_transfer.modules import trainer

    cfg = dict(dropout=0.2, hidden_units=0, optimizer="adamw", weight_decay=1e-4,
               learning_rate=1e-3, warmup_epochs=0.0, cosine_decay=True, clipnorm=None,
               label_smoothing=0.0, seed=42, **settings)
    tf.keras.utils.set_random_seed(42)
    k = int(y.max()) + 1
    head = trainer.build_head(x.shape[1], k, cfg)
    bs, epochs = cfg["batch_size"], cfg["epochs"]
    trainer.compile_model(head, cfg, cfg["learning_rate"], trainer._steps(len(y), bs), epochs)
    ds = (tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, k)))
          .shuffle(min(len(y), trainer.SHUFFLE_BUFFER), seed=42, reshuffle_each_iteration=True)
          .batch(bs))
    head.fit(ds, epochs=epochs, verbose=0)
    pred = head.predict(xt, batch_size=4096, verbose=0).argmax(1)
    return {"accuracy": float((pred == yt).mean()), "epochs": epochs}


def lbfgs(x, y, xt, yt):
    from tfx_transfer.modules import probe_solver

    r = probe_solver.solve(x, y, int(y.max()) + 1)
    pred = (xt @ r["kernel"] + r["bias"]).argmax(1)
    return {"accuracy": float((pred == yt).mean()),
            **{k: r[k] for k in ("l2", "l2_grid", "iterations", "grad_norm", "converged")}}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", required=True, help="npz written by peer_probe.py --features-cache")
    p.add_argument("--subsets", default=",".join(SUBSETS))
    p.add_argument("--solvers", default="peer,sgd,lbfgs")
    p.add_argument("--out", default=os.path.join(HERE, "results", "probe_heads"))
    args = p.parse_args()
    z = np.load(args.features)
    x_all, y_all, xt, yt = z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    subsets, solvers = args.subsets.split(","), args.solvers.split(",")
    results = {"features": os.path.basename(args.features), "rows": []}
    if os.path.exists(args.out + ".json"):  # keep the other rows (each names its invocation)
        with open(args.out + ".json") as f:
            results["rows"] = [r for r in json.load(f)["rows"]
                               if r["subset"] not in subsets or r["solver"] not in solvers]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for name in subsets:
        per_class, settings = SUBSETS[name]
        idx = subset(y_all, per_class)
        x, y = x_all[idx], y_all[idx]
        for solver in solvers:
            start = time.time()
            r = (peer(x, y, xt, yt) if solver == "peer" else
                 sgd(x, y, xt, yt, settings) if solver == "sgd" else lbfgs(x, y, xt, yt))
            r.update(subset=name, train=len(y), test=len(yt), solver=solver,
                     fit_s=round(time.time() - start, 2), invocation=stamp)
            results["rows"].append(r)
            write(results, args.out)


def write(results, out):
    md = ["| subset | train | solver | accuracy | fit s | notes | invocation |",
          "|---|---|---|---|---|---|---|"]
    for r in sorted(results["rows"], key=lambda r: (r["train"], r.get("invocation", ""))):
        notes = (f"l2 {r['l2']}, {r['iterations']} it, max|g| {r['grad_norm']:.1e}"
                 if r["solver"] == "lbfgs" else f"{r.get('epochs', r.get('iterations'))} "
                 + ("epochs" if r["solver"] == "sgd" else "it"))
        md.append(f"| {r['subset']} | {r['train']} | {r['solver']} | {100 * r['accuracy']:.2f} % | "
                  f"{r['fit_s']} | {notes} | {r.get('invocation', '')} |")
    print(md[-1], flush=True)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
