"""The EmbeddingProjector's computation, free of TFX: stratified sampling,
2-D projections (PCA, t-SNE, UMAP), separability metrics, and the files a
person looks at (points table, six-panel figure, HTML report, TensorBoard
Embedding Projector assets).

Every function takes numpy arrays and plain values, so tests and
benchmarks drive it without a pipeline.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfx_transfer.modules import progress_events

log = logging.getLogger("tfx_transfer.projector")

METHODS = ("pca", "tsne", "umap")
METHOD_TITLES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
STAGES = ("before", "after")
KNN_K = 5
KNN_FOLDS = 5
TRUST_K = 5
TSNE_PERPLEXITY = 30.0
# openTSNE's FFT gradient costs ~8 s per run here whatever N (its interpolation
# grid has a minimum size) and scales linearly; Barnes-Hut is O(N log N): 0.2 s
# at 150 points, about even at 2,000 (5.9 vs 7.9 s), behind at 5,000 (24 vs 18 s).
TSNE_FFT_FROM = 1000
MIN_POINTS = 10  # fewer make t-SNE's perplexity and UMAP's neighbourhoods meaningless
UMAP_NEIGHBORS = 15
UMAP_MIN_DIST = 0.1
# TensorBoard's projector refuses sprites larger than this on a side.
SPRITE_MAX_PX = 8192
THUMB_PX = 32


# --------------------------------------------------------------------------
# Sampling
def stratified_sample(labels: Sequence, n: int, seed: int) -> np.ndarray:
    """Sorted indices of n items, each class drawn in proportion to its share.

    Largest remainders decide the last places so the total is exactly n;
    everything is returned when n covers the whole population.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / counts.sum()
    take = np.floor(quota).astype(int)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[:n - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), t, replace=False)
              for c, t in zip(classes, take) if t]
    return np.sort(np.concatenate(picked))


# --------------------------------------------------------------------------
# Projections
def project(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    """[N, D] -> [N, 2] float32 with a fixed seed, so reruns give the same picture.

    Single-threaded on purpose: openTSNE's result depends on its thread
    count, and UMAP is only reproducible single-threaded; at 2,000 points
    threads save little (see benchmarks/projector_cost.py).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if n < MIN_POINTS:
        raise ValueError(f"{n} points are too few to project; at least {MIN_POINTS} are needed")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x).astype(np.float32)
    if method == "tsne":
        from openTSNE import TSNE

        # openTSNE needs 3 * perplexity < N; small samples get a smaller one.
        perplexity = min(TSNE_PERPLEXITY, max(1.0, (n - 1) / 3.0 - 1e-3))
        return np.asarray(TSNE(n_components=2, perplexity=perplexity, metric="euclidean",
                               negative_gradient_method=tsne_gradient(n), initialization="pca",
                               n_jobs=1, random_state=seed, verbose=False).fit(x),
                          dtype=np.float32)
    if method == "umap":
        import warnings

        umap = import_umap()
        with warnings.catch_warnings():
            # A random_state makes UMAP single-threaded; it says so on every call.
            warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
            reducer = umap.UMAP(n_components=2, n_neighbors=min(UMAP_NEIGHBORS, n - 1),
                                min_dist=UMAP_MIN_DIST, metric="euclidean", random_state=seed)
            return reducer.fit_transform(x).astype(np.float32)
    raise ValueError(f"unknown projection method {method!r}; expected one of {METHODS}")


def numba_cache_dir() -> str:
    """Where UMAP's compiled code is kept between runs: $NUMBA_CACHE_DIR, else
    ~/.cache/tfx-transfer/numba."""
    return os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "tfx-transfer", "numba")


def import_umap():
    """umap, its numba functions compiled once per machine, not once per run.

    UMAP marks few of its jitted functions cache=True, so each new process
    compiled them again: ~20 s of a 100-point projection that takes 0.3 s.
    While umap (and pynndescent) import, numba's decorators default to
    cache=True, with the cache in numba_cache_dir(). Compiled code is the
    same; numba checks the source and the CPU before reusing an entry.
    """
    import sys

    if "umap" in sys.modules:
        return sys.modules["umap"]
    import functools

    cache_dir = numba_cache_dir()
    os.environ.setdefault("NUMBA_CACHE_DIR", cache_dir)
    import numba
    from numba.core import config

    if not config.CACHE_DIR:  # numba was imported before the variable was set
        config.CACHE_DIR = cache_dir

    def cached(decorator):
        @functools.wraps(decorator)
        def wrapper(*args, **kwargs):
            kwargs.setdefault("cache", True)
            return decorator(*args, **kwargs)
        return wrapper

    njit, jit = numba.njit, numba.jit
    numba.njit, numba.jit = cached(njit), cached(jit)
    try:
        import umap
    finally:
        numba.njit, numba.jit = njit, jit
    return umap


def tsne_gradient(n: int) -> str:
    return "fft" if n >= TSNE_FFT_FROM else "bh"


def project_all(x: np.ndarray, seed: int, methods: Sequence[str] = METHODS,
                stage: str = "") -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
    """(method -> [N, 2], method -> wall seconds)."""
    coords, seconds = {}, {}
    for method in methods:
        start = time.perf_counter()
        with progress_events.phase(f"{METHOD_TITLES.get(method, method)} {stage}".strip(),
                                   len(x), "points"):
            coords[method] = project(x, method, seed)
        seconds[method] = round(time.perf_counter() - start, 3)
        log.info("projector: %s %s of %s in %.1fs", stage, METHOD_TITLES.get(method, method),
                 "x".join(map(str, x.shape)), seconds[method])
    return coords, seconds


# --------------------------------------------------------------------------
# Metrics
def _encode(labels) -> np.ndarray:
    return np.unique(np.asarray(labels), return_inverse=True)[1]


def silhouette(x: np.ndarray, labels) -> Optional[float]:
    """Mean silhouette (euclidean); None when it is undefined (one class, or
    every point its own class)."""
    from sklearn.metrics import silhouette_score

    y = _encode(labels)
    if not 2 <= len(np.unique(y)) < len(y):
        return None
    return float(silhouette_score(x, y, metric="euclidean"))


def knn_accuracy(x: np.ndarray, labels, seed: int, k: int = KNN_K,
                 folds: int = KNN_FOLDS) -> Optional[float]:
    """Mean accuracy of a k-nearest-neighbour classifier, stratified k-fold
    cross-validated; folds shrink to the smallest class so each fold holds
    every class."""
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    y = _encode(labels)
    if len(np.unique(y)) < 2 or len(y) < 4:
        return None
    smallest = int(np.bincount(y).min())
    folds = min(folds, len(y))
    cv = (StratifiedKFold(min(folds, smallest), shuffle=True, random_state=seed) if smallest >= 2
          else KFold(folds, shuffle=True, random_state=seed))
    train_size = len(y) - math.ceil(len(y) / cv.get_n_splits())
    clf = KNeighborsClassifier(n_neighbors=min(k, train_size))
    return float(np.mean(cross_val_score(clf, x, y, cv=cv)))


def trustworthiness(x: np.ndarray, coords: np.ndarray, k: int = TRUST_K) -> Optional[float]:
    """How far the 2-D neighbours of each point are true neighbours (1 = all)."""
    from sklearn.manifold import trustworthiness as sk_trustworthiness

    k = min(k, (len(x) - 1) // 2)
    if k < 1:
        return None
    return float(sk_trustworthiness(x, coords, n_neighbors=k))


def stage_metrics(x: np.ndarray, labels, coords: Dict[str, np.ndarray], seed: int) -> Dict:
    """Numbers of one embedding: full-space silhouette and k-NN accuracy,
    and per projection its silhouette and trustworthiness."""
    out = {"dim": int(x.shape[1]), "silhouette": silhouette(x, labels),
           "knn_accuracy": knn_accuracy(x, labels, seed), "projections": {}}
    for method, c in coords.items():
        out["projections"][method] = {"silhouette": silhouette(c, labels),
                                      "trustworthiness": trustworthiness(x, c)}
    return out


# --------------------------------------------------------------------------
# Outputs
def write_points(path: str, filenames: Sequence[str], labels: Sequence[str],
                 predicted: Sequence[str], coords: Dict[str, Dict[str, np.ndarray]]) -> List[str]:
    """CSV: filename, label, predicted, then <method>_<stage>_x/_y. Returns the header."""
    header = ["filename", "label", "predicted"]
    columns = []
    for stage in STAGES:
        for method in METHODS:
            if method in coords.get(stage, {}):
                header += [f"{method}_{stage}_x", f"{method}_{stage}_y"]
                columns += [coords[stage][method][:, 0], coords[stage][method][:, 1]]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(len(filenames)):
            w.writerow([filenames[i], labels[i], predicted[i]] +
                       [f"{col[i]:.6g}" for col in columns])
    return header


def class_colors(class_names: Sequence[str]) -> Dict[str, tuple]:
    """One colour per class, fixed by the class order, shared by every panel."""
    import matplotlib

    n = len(class_names)
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        colors = [cmap(i) for i in range(n)]
    elif n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        colors = [cmap(i) for i in range(n)]
    else:
        cmap = matplotlib.colormaps["gist_rainbow"]
        colors = [cmap(i / max(1, n - 1)) for i in range(n)]
    return dict(zip(class_names, colors))


def _fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"


def plot_panels(path: str, coords: Dict[str, Dict[str, np.ndarray]], labels: Sequence[str],
                class_names: Sequence[str], metrics: Dict, title: str = "") -> None:
    """One PNG: rows before/after, columns PCA/t-SNE/UMAP, one legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    colors = class_colors(class_names)
    point_size = float(np.clip(8000 / max(len(labels), 1), 3, 30))
    legend_in = 1.6 if len(class_names) <= 40 else 3.0
    # Unchanged embeddings (linear probe) are drawn once, not as two equal rows.
    stages = STAGES[:1] if metrics.get("before_equals_after") else STAGES
    fig, axes = plt.subplots(len(stages), len(METHODS),
                             figsize=(5 * len(METHODS) + legend_in, 0.5 + 4.5 * len(stages)),
                             squeeze=False)
    for r, stage in enumerate(stages):
        numbers = metrics.get(stage, {})
        for c, method in enumerate(METHODS):
            ax = axes[r][c]
            xy = coords[stage][method]
            for name in class_names:
                mask = labels == name
                if mask.any():
                    ax.scatter(xy[mask, 0], xy[mask, 1], s=point_size, color=colors[name],
                               alpha=0.75, linewidths=0, label=name)
            p = numbers.get("projections", {}).get(method, {})
            shown = "before = after" if len(stages) == 1 else stage
            ax.set_title(f"{METHOD_TITLES[method]} · {shown}\nsilhouette "
                         f"{_fmt(p.get('silhouette'))} · trustworthiness "
                         f"{_fmt(p.get('trustworthiness'))}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(f"{stage}: silhouette {_fmt(numbers.get('silhouette'))}, "
                              f"{KNN_K}-NN acc. {_fmt(numbers.get('knn_accuracy'))}", fontsize=10)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colors[n], label=n)
               for n in class_names]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False,
               ncol=1 if len(class_names) <= 40 else 2, title="class")
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - legend_in / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(path: str, figure_png: str, metrics: Dict, files: Dict[str, str],
                 title: str) -> None:
    """Self-contained HTML: the figure inline and the numbers as tables."""
    with open(figure_png, "rb") as f:
        image = base64.b64encode(f.read()).decode()
    rows = []
    for stage in STAGES:
        m = metrics.get(stage, {})
        rows.append(f"<tr><th>{stage}</th><td>full space ({m.get('dim')}-d)</td>"
                    f"<td>{_fmt(m.get('silhouette'))}</td><td>{_fmt(m.get('knn_accuracy'))}</td>"
                    "<td></td><td></td></tr>")
        for method in METHODS:
            p = m.get("projections", {}).get(method, {})
            seconds = metrics.get("timings_s", {}).get(f"{method}_{stage}")
            rows.append(f"<tr><th>{stage}</th><td>{METHOD_TITLES[method]} (2-d)</td>"
                        f"<td>{_fmt(p.get('silhouette'))}</td><td></td>"
                        f"<td>{_fmt(p.get('trustworthiness'))}</td><td>{_fmt(seconds, 1)}</td></tr>")
    timings = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.1f}</td></tr>"
                      for k, v in metrics.get("timings_s", {}).items())
    links = "".join(f'<li>{html.escape(k)}: <a href="{html.escape(v)}">{html.escape(v)}</a></li>'
                    for k, v in files.items())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in metrics.get("notes", []))
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} img{{max-width:100%}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<p>{metrics.get('num_samples')} eval examples (class-stratified sample of
{metrics.get('eval_examples')}), {metrics.get('num_classes')} classes, seed {metrics.get('seed')}.
Accuracy of the trained model on this sample: {_fmt(metrics.get('sample_accuracy'))}.</p>
<ul>{notes}</ul>
<img src="data:image/png;base64,{image}" alt="PCA, t-SNE and UMAP before and after training">
<h2>Separability</h2>
<table><tr><th>stage</th><th>space</th><th>silhouette</th><th>{KNN_K}-NN accuracy
({metrics.get('params', {}).get('knn_folds', KNN_FOLDS)}-fold CV)</th>
<th>trustworthiness (k={TRUST_K})</th><th>seconds</th></tr>
{''.join(rows)}</table>
<h2>Wall time (s)</h2><table>{timings}</table>
<h2>Files</h2><ul>{links}</ul>
<p>TensorBoard: <code>tensorboard --logdir {html.escape(files.get('tensorboard', ''))}</code>,
tab "Projector".</p>
</body></html>
"""
    with open(path, "w") as f:
        f.write(doc)


def sprite(thumbnails: np.ndarray) -> Tuple[np.ndarray, int]:
    """[N, h, w, 3] uint8 -> (square sprite image, side of one thumbnail).

    Thumbnails fill the grid row by row in point order, as the projector
    expects; they shrink when N would make the sprite too large.
    """
    n, h = len(thumbnails), thumbnails.shape[1]
    grid = max(1, math.ceil(math.sqrt(n)))
    side = min(h, SPRITE_MAX_PX // grid)
    if side != h:
        from PIL import Image

        thumbnails = np.stack([np.asarray(Image.fromarray(t).resize((side, side),
                                                                     Image.BILINEAR))
                               for t in thumbnails])
    out = np.full((grid * side, grid * side, 3), 255, dtype=np.uint8)
    for i, t in enumerate(thumbnails):
        r, c = divmod(i, grid)
        out[r * side:(r + 1) * side, c * side:(c + 1) * side] = t[:, :, :3]
    return out, side


def _tsv_cell(value: str) -> str:
    return str(value).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def write_tensorboard(log_dir: str, embeddings: Dict[str, np.ndarray], labels: Sequence[str],
                      predicted: Sequence[str], filenames: Sequence[str],
                      thumbnails: Optional[np.ndarray]) -> Dict[str, str]:
    """Embedding Projector assets `tensorboard --logdir log_dir` opens:
    one checkpoint holding one [N, D] variable per stage, metadata.tsv,
    sprite.png and projector_config.pbtxt (paths relative to log_dir, so the
    folder can be copied anywhere)."""
    import tensorflow as tf
    from google.protobuf import text_format
    from tensorboard.plugins import projector

    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, "metadata.tsv"), "w") as f:
        f.write("label\tpredicted\tfilename\n")
        for row in zip(labels, predicted, filenames):
            f.write("\t".join(_tsv_cell(v) for v in row) + "\n")
    variables = {stage: tf.Variable(v.astype(np.float32), name=stage, trainable=False)
                 for stage, v in embeddings.items()}
    ckpt = tf.train.Checkpoint(**variables).save(os.path.join(log_dir, "embeddings"))
    config = projector.ProjectorConfig()
    side = None
    if thumbnails is not None and len(thumbnails):
        image, side = sprite(thumbnails)
        from PIL import Image

        Image.fromarray(image).save(os.path.join(log_dir, "sprite.png"))
    for stage in embeddings:
        e = config.embeddings.add()
        e.tensor_name = f"{stage}/.ATTRIBUTES/VARIABLE_VALUE"
        e.metadata_path = "metadata.tsv"
        if side:
            e.sprite.image_path = "sprite.png"
            e.sprite.single_image_dim.extend([side, side])
    with open(os.path.join(log_dir, "projector_config.pbtxt"), "w") as f:
        f.write(text_format.MessageToString(config))
    return {"checkpoint": ckpt, "config": os.path.join(log_dir, "projector_config.pbtxt")}


def write_json(path: str, payload) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=float)


def thumbnail_bytes_to_array(images: List[bytes], size: int = THUMB_PX) -> np.ndarray:
    """Encoded images -> [N, size, size, 3] uint8 thumbnails (PIL; no TensorFlow)."""
    from PIL import Image

    out = np.zeros((len(images), size, size, 3), dtype=np.uint8)
    for i, data in enumerate(images):
        try:
            with Image.open(io.BytesIO(data)) as im:
                out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
        except Exception:  # noqa: BLE001 -- a thumbnail PIL cannot read stays black
            log.warning("projector: no thumbnail for image %d (PIL cannot decode it)", i)
    return out
