"""EmbeddingProjector: how the classes sit in embedding space before and
after training, as pictures (PCA, t-SNE, UMAP) and as numbers.

Inputs: the examples (their eval split), the transform graph and the
trained model. A class-stratified sample of eval examples is embedded twice:
"before" by the pretrained backbone alone plus the Trainer's global pooling,
"after" by the trained model's penultimate layer (the SavedModel's
`embeddings` signature). Output: one EmbeddingProjection artefact holding
metrics.json, points.csv, projections.png, report.html and tensorboard/
(Embedding Projector assets). The computation lives in
components/projections.py; this module is the TFX glue.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Dict, List

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils

from tfx_transfer.modules import contract, progress_events
from tfx_transfer.modules.contract import FILENAME_KEY, IMAGE_KEY, LABEL_KEY

log = logging.getLogger("tfx_transfer.projector")

EXAMPLES_KEY = "examples"
TRANSFORM_GRAPH_KEY = "transform_graph"
MODEL_KEY = "model"
PROJECTION_KEY = "projection"
NUM_SAMPLES_KEY = "num_samples"
SEED_KEY = "seed"
SPLIT = "eval"
BATCH = 64
FILES = {"metrics": "metrics.json", "points": "points.csv", "figure": "projections.png",
         "report": "report.html", "tensorboard": "tensorboard"}


class EmbeddingProjection(types.Artifact):
    """A folder of 2-D projections of eval embeddings, before and after training."""

    # TFX's KFP v2 container entrypoint imports a custom artifact's class by
    # its type name (kubeflow_v2_entrypoint_utils._retrieve_class_path), and
    # its compiler takes only `module.Class` names: components/__init__.py
    # provides this one.
    TYPE_NAME = "tfx_transfer.EmbeddingProjection"  # importable by that name: tfx_transfer/__init__.py


class EmbeddingProjectorSpec(types.ComponentSpec):
    PARAMETERS = {
        NUM_SAMPLES_KEY: ExecutionParameter(type=int),
        SEED_KEY: ExecutionParameter(type=int),
    }
    INPUTS = {
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        TRANSFORM_GRAPH_KEY: ChannelParameter(type=standard_artifacts.TransformGraph),
        MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
    }
    OUTPUTS = {
        PROJECTION_KEY: ChannelParameter(type=EmbeddingProjection),
    }


# --------------------------------------------------------------------------
# Reading and embedding (TensorFlow)
def _eval_files(examples) -> List[str]:
    import tensorflow as tf

    split_uri = artifact_utils.get_split_uri([examples], SPLIT)
    files = sorted(tf.io.gfile.glob(os.path.join(split_uri, "*")))
    if not files:
        raise ValueError(f"EmbeddingProjector: no '{SPLIT}' examples in {split_uri}")
    return files


def _records(files):
    import tensorflow as tf

    return tf.data.TFRecordDataset(files, compression_type="GZIP")


def read_sample(files: List[str], num_samples: int, seed: int):
    """(serialized examples of the sample, number of eval examples).

    Two passes: labels first (all of them, to stratify), then only the
    chosen records are kept, so memory grows with the sample, not the split.
    """
    import numpy as np
    import tensorflow as tf

    from tfx_transfer.components import projections

    spec = {LABEL_KEY: tf.io.FixedLenFeature([], tf.string, default_value="")}
    labels = []
    for batch in _records(files).batch(1024):
        labels.extend(tf.io.parse_example(batch, spec)[LABEL_KEY].numpy())
    chosen = projections.stratified_sample(np.asarray(labels), num_samples, seed)
    wanted, picked = set(chosen.tolist()), []
    for i, record in enumerate(_records(files).as_numpy_iterator()):
        if i in wanted:
            picked.append(record)
    return picked, len(labels)


def parse_sample(serialized: List[bytes]):
    """(filenames, labels, encoded images) of serialized tf.Examples."""
    import tensorflow as tf

    spec = {k: tf.io.FixedLenFeature([], tf.string, default_value="")
            for k in (FILENAME_KEY, LABEL_KEY, IMAGE_KEY)}
    parsed = tf.io.parse_example(tf.constant(serialized), spec)
    text = lambda k: [v.decode("utf-8", "replace") for v in parsed[k].numpy()]  # noqa: E731
    return text(FILENAME_KEY), text(LABEL_KEY), list(parsed[IMAGE_KEY].numpy())


def embed_after(model_uri: str, serialized: List[bytes]):
    """(embeddings [N, D], predicted class names) from the trained model."""
    import numpy as np
    import tensorflow as tf
    from tfx.utils import path_utils

    with progress_events.phase("loading the trained model"):
        fn = tf.saved_model.load(path_utils.serving_model_path(model_uri)).signatures[
            contract.EMBEDDINGS]
    embeddings, predicted = [], []
    t0 = time.monotonic()
    for start in range(0, len(serialized), BATCH):
        out = fn(**{contract.EXAMPLES_INPUT: tf.constant(serialized[start:start + BATCH])})
        embeddings.append(out[contract.EMBEDDING].numpy().astype(np.float32))
        predicted.extend(v.decode() for v in out[contract.CLASS_NAMES].numpy())
        progress_events.emit("embedding (trained model)", len(predicted), len(serialized))
    progress_events.emit("embedding (trained model)", len(predicted), len(serialized),
                         finished=True, seconds=time.monotonic() - t0)
    return np.concatenate(embeddings), predicted


def module_config(model_uri: str):
    """The model and training config the Trainer used (written beside the model)."""
    import tensorflow as tf

    from tfx_transfer.modules.config import ModuleConfig

    with tf.io.gfile.GFile(os.path.join(model_uri, contract.MODULE_CONFIG_FILE)) as f:
        return ModuleConfig.from_custom_config(json.load(f))


def embed_before(model_uri: str, transform_graph_uri: str, images: List[bytes], seed: int):
    """Embeddings of the backbone the Trainer started from, pooled its way,
    on the Transform's preprocessed images."""
    import numpy as np
    from tfx_transfer.modules import keras_compat  # noqa: F401
    import tensorflow as tf
    import tensorflow_transform as tft
    import tf_keras as keras

    from tfx_transfer.modules import backbones

    mc = module_config(model_uri)
    size = mc.model.image_size
    weights = backbones.resolve_weights(mc.model.backbone, size, mc.model.weights)
    # Without pretrained weights "before" is a random initialisation; seeding
    # as the Trainer does (run_fn) redraws the Trainer's own starting weights.
    keras.utils.set_random_seed(mc.training.seed)
    backbone = backbones.get(mc.model.backbone).build(size, weights=weights)
    pool = (keras.layers.GlobalAveragePooling2D() if mc.model.pooling == "avg"
            else keras.layers.GlobalMaxPooling2D())
    tft_output = tft.TFTransformOutput(transform_graph_uri)
    tft_layer = tft_output.transform_features_layer()
    shape = [-1] + list(tft_output.raw_feature_spec()[IMAGE_KEY].shape)

    @tf.function
    def features(encoded):
        pixels = tft_layer({IMAGE_KEY: tf.reshape(encoded, shape)})[IMAGE_KEY]
        return pool(backbone(pixels, training=False))

    out, t0 = [], time.monotonic()
    for s in range(0, len(images), BATCH):
        out.append(features(tf.constant(images[s:s + BATCH])).numpy())
        progress_events.emit("embedding (backbone before)", min(s + BATCH, len(images)),
                             len(images))
    progress_events.emit("embedding (backbone before)", len(images), len(images), finished=True,
                         seconds=time.monotonic() - t0)
    return np.concatenate(out).astype(np.float32), mc


# --------------------------------------------------------------------------
def project_and_report(out_dir: str, before, after, filenames: List[str], labels: List[str],
                       predicted: List[str], class_names: List[str], thumbnails, seed: int,
                       extra: Dict[str, Any], title: str) -> Dict[str, Any]:
    """Projections, metrics and every output file of one run; returns metrics."""
    import numpy as np

    from tfx_transfer.components import projections as P

    metrics: Dict[str, Any] = dict(extra)
    timings = metrics.setdefault("timings_s", {})
    notes = metrics.setdefault("notes", [])
    embeddings = {"before": before, "after": after}
    # Relative to the embeddings' scale: untrained backbones give values ~1e-13.
    same = before.shape == after.shape and np.allclose(
        before, after, rtol=1e-5, atol=1e-6 * float(np.abs(before).max(initial=0.0)))
    metrics["before_equals_after"] = bool(same)
    coords: Dict[str, Dict[str, Any]] = {}
    for stage in P.STAGES:
        if stage == "after" and same:
            # Frozen backbone and a head without a hidden layer (linear probe):
            # the penultimate layer is the pooled backbone output itself.
            notes.append("after == before: training did not change the embeddings. Expected "
                         "for a linear probe without a hidden layer (the penultimate layer is "
                         "the frozen backbone's pooled output); projections computed once.")
            coords["after"] = coords["before"]
            metrics["after"] = dict(metrics["before"])
            for m in P.METHODS:
                timings[f"{m}_after"] = 0.0
            continue
        coords[stage], seconds = P.project_all(embeddings[stage], seed, stage=stage)
        timings.update({f"{m}_{stage}": s for m, s in seconds.items()})
        start = time.perf_counter()
        with progress_events.phase(f"separability {stage}"):
            metrics[stage] = P.stage_metrics(embeddings[stage], labels, coords[stage], seed)
        timings[f"metrics_{stage}"] = round(time.perf_counter() - start, 3)
        log.info("projector: %s metrics in %.1fs: silhouette %s, %d-NN accuracy %s", stage,
                 timings[f"metrics_{stage}"], metrics[stage]["silhouette"], P.KNN_K,
                 metrics[stage]["knn_accuracy"])
    for method in P.METHODS:
        timings[method] = round(timings[f"{method}_before"] + timings[f"{method}_after"], 3)

    start = time.perf_counter()
    paths = {k: os.path.join(out_dir, v) for k, v in FILES.items()}
    with progress_events.phase("drawing and writing"):
        P.write_points(paths["points"], filenames, labels, predicted, coords)
        P.plot_panels(paths["figure"], coords, labels, class_names, metrics, title)
        P.write_tensorboard(paths["tensorboard"], embeddings, labels, predicted, filenames,
                            thumbnails)
    timings["write_outputs"] = round(time.perf_counter() - start, 3)
    P.write_report(paths["report"], paths["figure"], metrics, FILES, title)
    P.write_json(paths["metrics"], metrics)
    log.info("projector: outputs in %s (%.1fs)", out_dir, timings["write_outputs"])
    return metrics


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        import numpy as np
        import tensorflow as tf
        import tensorflow_transform as tft

        from tfx_transfer.components import projections as P

        t0 = time.perf_counter()
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        graph_uri = artifact_utils.get_single_uri(input_dict[TRANSFORM_GRAPH_KEY])
        model_uri = artifact_utils.get_single_uri(input_dict[MODEL_KEY])
        projection = artifact_utils.get_single_instance(output_dict[PROJECTION_KEY])
        num_samples = int(exec_properties.get(NUM_SAMPLES_KEY) or 2000)
        seed = int(exec_properties.get(SEED_KEY) or 0)
        timings: Dict[str, float] = {}

        def lap(name, start):
            timings[name] = round(time.perf_counter() - start, 3)
            log.info("projector: %s done in %.1fs", name, timings[name])

        start = time.perf_counter()
        serialized, total = read_sample(_eval_files(examples), num_samples, seed)
        filenames, labels, images = parse_sample(serialized)
        lap("sample", start)
        log.info("projector: %d of %d eval examples (stratified, seed %d)", len(serialized),
                 total, seed)
        if len(serialized) < P.MIN_POINTS:
            raise ValueError(
                f"EmbeddingProjector: {len(serialized)} eval examples sampled, at least "
                f"{P.MIN_POINTS} are needed (projector_samples={num_samples}, {total} in the "
                "eval split); raise projector_samples or switch it off (projector: false)")

        start = time.perf_counter()
        after, predicted = embed_after(model_uri, serialized)
        lap("embed_after", start)
        start = time.perf_counter()
        mc = module_config(model_uri)
        if mc.training.mode == "linear_probe" and not mc.model.hidden_units:
            # The penultimate layer is the frozen backbone's pooled output: "before"
            # is "after" (tests/test_cli_ux.py checks that a rebuilt one matches).
            before = after
        else:
            before, mc = embed_before(model_uri, graph_uri, images, seed)
        lap("embed_before", start)
        thumbnails = P.thumbnail_bytes_to_array(images)

        vocab = tft.TFTransformOutput(graph_uri).vocabulary_by_name(contract.LABEL_VOCAB)
        class_names = [v.decode() if isinstance(v, bytes) else v for v in vocab]
        class_names += sorted(set(labels) - set(class_names))  # eval-only classes, if any
        extra = {
            "num_samples": len(serialized), "requested_samples": num_samples,
            "eval_examples": total, "num_classes": len(set(labels)), "seed": seed,
            "backbone": mc.model.backbone, "mode": mc.training.mode,
            "weights": mc.model.weights, "hidden_units": mc.model.hidden_units,
            "sample_accuracy": float(np.mean(np.asarray(labels) == np.asarray(predicted))),
            "params": {"knn_k": P.KNN_K, "knn_folds": P.KNN_FOLDS, "trustworthiness_k": P.TRUST_K,
                       "tsne": {"perplexity": P.TSNE_PERPLEXITY,
                                "gradient": P.tsne_gradient(len(serialized))},
                       "umap": {"n_neighbors": P.UMAP_NEIGHBORS, "min_dist": P.UMAP_MIN_DIST}},
            "timings_s": timings, "notes": [],
        }
        if mc.model.weights == "none":
            extra["notes"].append("weights=none: 'before' is the randomly initialised backbone, "
                                  f"redrawn with the Trainer's seed ({mc.training.seed}).")
        title = (f"{mc.model.backbone} {mc.training.mode}: {len(serialized)} eval examples, "
                 "before vs. after training")
        # Written locally, then copied: the artefact URI may be gs:// or s3://
        # (Kubeflow), which matplotlib, PIL and csv cannot write to.
        local = tempfile.mkdtemp(prefix="embedding_projector_")
        try:
            metrics = project_and_report(local, before, after, filenames, labels, predicted,
                                         class_names, thumbnails, seed, extra, title)
            timings["total"] = round(time.perf_counter() - t0, 3)
            P.write_json(os.path.join(local, FILES["metrics"]), metrics)  # now with the total
            io_utils.copy_dir(local, projection.uri)
        finally:
            shutil.rmtree(local, ignore_errors=True)

        projection.set_int_custom_property("num_samples", len(serialized))
        for stage in P.STAGES:
            for name in ("silhouette", "knn_accuracy"):
                if metrics[stage].get(name) is not None:
                    projection.set_float_custom_property(f"{name}_{stage}", metrics[stage][name])
        log.info("projector: finished in %.1fs", timings["total"])


class EmbeddingProjector(base_component.BaseComponent):
    """PCA, t-SNE and UMAP of eval embeddings before and after training, with
    separability numbers (silhouette, k-NN accuracy, trustworthiness)."""

    SPEC_CLASS = EmbeddingProjectorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 model: types.BaseChannel, num_samples: int = 2000, seed: int = 42):
        super().__init__(spec=EmbeddingProjectorSpec(
            examples=examples, transform_graph=transform_graph, model=model,
            num_samples=num_samples, seed=seed,
            projection=types.Channel(type=EmbeddingProjection)))


def summary_section(outputs: Dict[str, List]) -> Dict[str, Any]:
    """summary.json's "projector": the metrics of the run's EmbeddingProjection
    artefact (ml_metadata Artifact protos by output key) and its file paths."""
    artifacts = outputs.get(PROJECTION_KEY) or []
    if not artifacts:
        return {}
    import tensorflow as tf

    uri = artifacts[0].uri
    path = os.path.join(uri, FILES["metrics"])
    if not tf.io.gfile.exists(path):
        return {"error": f"no {FILES['metrics']} in {uri}", "uri": uri}
    with tf.io.gfile.GFile(path) as f:
        section = json.load(f)
    section["uri"] = uri
    section["files"] = {k: os.path.join(uri, v) for k, v in FILES.items()}
    return section
