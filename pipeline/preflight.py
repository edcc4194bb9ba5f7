"""Checks a run's inputs in seconds, before TensorFlow or TFX is imported.

Importing TFX costs 10-20 s; a typo in a path should not. Everything here uses
the standard library, PyYAML and h5py only, and writes nothing: a rejected
run leaves no output folder behind. Each failure is one line naming what to
change (PreflightError, a ConfigError, so the CLI prints it and exits 2).

A weights file is checked against the backbone without building it: Keras
loads an HDF5 weights file layer by layer in order and refuses a file whose
count of layers-with-weights differs from the model's, so that count (and the
first and last such layer, for the message) is stored per backbone in
BACKBONE_LAYERS_FILE, generated once with `python -m tfx_transfer.pipeline.preflight`.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, List, Optional, Tuple

from tfx_transfer.components import file_kinds
from tfx_transfer.pipeline.config import ConfigError, RunConfig
from tfx_transfer.pipeline.data_sources import EVAL_DIRS, TRAIN_DIRS

BACKBONE_LAYERS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "backbone_weight_layers.json")
# The split folders data_sources routes by (it imports TensorFlow only when it lists).
TRAIN_DIR = TRAIN_DIRS[0]
LAYOUT_HINT = "expected DIR/<class>/<image> or DIR/train/<class>/<image> + DIR/test/<class>/<image>"


class PreflightError(ConfigError):
    """A run input that cannot work; the message says what to change."""


def _visible(folder: str) -> List[str]:
    return sorted(f for f in os.listdir(folder) if not f.startswith((".", "_")))


def _class_folders(root: str) -> Dict[str, int]:
    """class folder -> number of files in it that may be images."""
    out = {}
    for name in _visible(root):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            out[name] = sum(1 for f in os.listdir(path) if not file_kinds.is_not_image(f)
                            and os.path.isfile(os.path.join(path, f)))
    return out


def check_data(data: str) -> None:
    if not data:
        raise PreflightError("config field 'data': no data given (--data DIR or data: in --config)")
    # tfds:NAME, remote roots and globs are resolved later, where they can be listed.
    if data.startswith("tfds:") or "://" in data or "*" in data:
        return
    if not os.path.exists(data):
        raise PreflightError(f"data folder {data} does not exist")
    if os.path.isfile(data):
        if ".tfrecord" in os.path.basename(data):
            return
        raise PreflightError(f"data {data} is a file; {LAYOUT_HINT}, or a folder of .tfrecord files")
    entries = _visible(data)
    if not entries:
        raise PreflightError(f"data folder {data} is empty; {LAYOUT_HINT}")
    if all(".tfrecord" in e for e in entries):
        return
    subdirs = {e for e in entries if os.path.isdir(os.path.join(data, e))}
    eval_dir = next((d for d in EVAL_DIRS if d in subdirs), None)
    if TRAIN_DIR in subdirs and eval_dir is None:
        raise PreflightError(f"data folder {data} has train/ but no test/ or eval/ beside it; "
                             "add one, or move the class folders up into the data folder")
    if TRAIN_DIR in subdirs:
        splits = {"train": os.path.join(data, TRAIN_DIR), "eval": os.path.join(data, eval_dir)}
    else:
        splits = {"train": data}
    classes = {}
    for split, root in splits.items():
        folders = _class_folders(root)
        loose = [e for e in _visible(root) if os.path.isfile(os.path.join(root, e))]
        if not folders:
            what = f"{len(loose)} files but no class folders" if loose else "no class folders"
            raise PreflightError(f"{root} has {what}; {LAYOUT_HINT}")
        classes[split] = {c for c, n in folders.items() if n}
        if not classes[split]:
            raise PreflightError(f"the class folders in {root} hold no files; {LAYOUT_HINT}")
    if len(classes["train"]) < 2:
        raise PreflightError(f"{splits['train']} has {len(classes['train'])} class folder with images "
                             f"({', '.join(sorted(classes['train']))}); a classifier needs at least 2")
    unseen = sorted(classes.get("eval", set()) - classes["train"])
    if unseen:
        raise PreflightError(f"classes {unseen} are in {splits['eval']} but not in {splits['train']}; "
                             "the model cannot learn them")


def split_roots(data: str) -> Optional[Dict[str, str]]:
    """split -> class-folder root for a local image folder (as ImageExampleGen splits it)."""
    if not os.path.isdir(data) or "://" in data:
        return None
    entries = _visible(data)
    if not entries or all(".tfrecord" in e for e in entries):
        return None
    eval_dir = next((d for d in EVAL_DIRS if os.path.isdir(os.path.join(data, d))), None)
    if os.path.isdir(os.path.join(data, TRAIN_DIR)) and eval_dir:
        return {"train": os.path.join(data, TRAIN_DIR), "eval": os.path.join(data, eval_dir)}
    return {"all": data}


def class_counts(data: str) -> Optional[Dict[str, Dict[str, int]]]:
    """split -> class -> files, for image folders; None where it cannot be known here
    (TFRecords, tfds:, gs:// and Kubeflow runtime parameters)."""
    roots = split_roots(data)
    return {split: _class_folders(root) for split, root in roots.items()} if roots else None


def expected_examples(data: str, eval_fraction: float) -> Dict[str, int]:
    """Images per split, for progress ETAs (a hash split is estimated)."""
    counts = class_counts(data) or {}
    if "all" in counts:
        n = sum(counts["all"].values())
        return {"train": round(n * (1 - eval_fraction)), "eval": round(n * eval_fraction)}
    return {split: sum(c.values()) for split, c in counts.items()}


def majority_baseline(data: str) -> Optional[Tuple[str, float]]:
    """(class, accuracy) of always predicting the training split's most frequent class.

    Scored on the eval folder when there is one; with a hash split the eval
    split is a random fifth of the same folders, so the class's share of all
    files is the expected score."""
    counts = class_counts(data)
    if not counts:
        return None
    train = counts.get("train") or counts["all"]
    if not train or not sum(train.values()):
        return None
    top = max(sorted(train), key=lambda c: train[c])
    scored = counts.get("eval") or train
    return top, scored.get(top, 0) / max(1, sum(scored.values()))


def _weighted_layers_in_file(path: str) -> Optional[List[str]]:
    """Names of the layers holding weights in a Keras HDF5 file; None if it is not one."""
    import h5py

    if not h5py.is_hdf5(path):
        return None
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f  # full-model saves nest it
        if "layer_names" not in group.attrs:
            return None
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["layer_names"]]
        return [n for n in names if n in group and len(group[n].attrs.get("weight_names", []))]


def expected_layers(backbone: str) -> Optional[dict]:
    if not os.path.exists(BACKBONE_LAYERS_FILE):
        return None
    with open(BACKBONE_LAYERS_FILE) as f:
        return json.load(f).get(backbone)


def check_weights(weights: str, backbone: str) -> None:
    if weights.lower() in ("imagenet", "none") or "://" in weights:
        return
    if weights.endswith(".keras"):  # a zip; Keras checks it on load
        return
    layers = _weighted_layers_in_file(weights)
    if layers is None:
        raise PreflightError(f"weights file {weights} is not a Keras HDF5 weights file (.h5 with "
                             "layer_names); pass a file saved by Keras, 'imagenet' or 'none'")
    want = expected_layers(backbone)
    if want is None or len(layers) == want["count"]:
        return
    got = f"{len(layers)} layers with weights" + (f" ({layers[0]} .. {layers[-1]})" if layers else "")
    hint = ("; it looks like a file with the classifier top: use the _no_top file"
            if layers and layers[-1] == "predictions" else "")
    raise PreflightError(
        f"weights file {weights} does not fit {backbone}: it has {got}, {backbone} without its top "
        f"needs {want['count']} ({want['first']} .. {want['last']}){hint}")


def check_output(output: str) -> None:
    path = os.path.abspath(output)
    if os.path.exists(path) and not os.path.isdir(path):
        raise PreflightError(f"output {output} is a file; pass a folder with --output")
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise PreflightError(f"output {output} cannot be created: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PreflightError(f"output {output} cannot be written: no write permission on {probe}")


def check_run(config: RunConfig) -> None:
    """Everything that can be known wrong about a run without TensorFlow."""
    check_data(config.data.data)
    check_weights(config.model.weights, config.model.backbone)
    check_output(config.deploy.output)
    if config.deploy.serving_dir:
        check_output(config.deploy.serving_dir)


def generate_layers_file(names: Optional[List[str]] = None) -> Dict[str, dict]:
    """Builds each backbone (no weights) and stores its layers-with-weights (needs TF)."""
    import gc

    from tfx_transfer.modules import backbones
    import tf_keras

    table = {}
    if os.path.exists(BACKBONE_LAYERS_FILE):
        with open(BACKBONE_LAYERS_FILE) as f:
            table = json.load(f)
    for name in names or [n for n in backbones.names() if n not in table]:
        b = backbones.get(name)
        model = b.build(max(b.min_size, min(b.default_size, 224)), weights=None)
        layers = [l.name for l in model.layers if l.weights]
        table[name] = {"count": len(layers), "first": layers[0], "last": layers[-1]}
        print(name, table[name], flush=True)
        del model
        tf_keras.backend.clear_session()
        gc.collect()
        with open(BACKBONE_LAYERS_FILE, "w") as f:
            json.dump(table, f, indent=0, sort_keys=True)
    return table


if __name__ == "__main__":
    generate_layers_file(sys.argv[1:] or None)
