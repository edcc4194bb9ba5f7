"""<output>/summary.json: what the last run did, read back from MLMD.

The summary is a contract: tools, tests and benchmarks read it. Everything
in it comes from the artefacts the run recorded in ML Metadata, so a cached
component reports the artefact it reused, not a guess.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional

from tfx_transfer.modules import contract
from tfx_transfer.pipeline.config import RunConfig

log = logging.getLogger("tfx_transfer")
ACCURACY = "sparse_categorical_accuracy"
TOP5 = "sparse_top_k_categorical_accuracy"


def metadata_path(config: RunConfig) -> str:
    """ML Metadata of local runs: SQLite in the run folder."""
    return os.path.join(config.deploy.output, "metadata.sqlite")


def summary_path(config: RunConfig) -> str:
    return os.path.join(config.deploy.output, contract.SUMMARY_FILE)


def _store(config: RunConfig):
    import ml_metadata as mlmd
    from tfx.orchestration import metadata

    return mlmd.MetadataStore(
        metadata.sqlite_metadata_connection_config(metadata_path(config)))


def _file_list(examples_uri: Optional[str], name: str) -> list:
    """A JSON list ImageExampleGen wrote into its Examples artefact ([] if none)."""
    path = os.path.join(examples_uri or "", name)
    if not examples_uri or not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def last_run(config: RunConfig) -> Dict[str, Dict[str, Any]]:
    """node id -> {state, seconds, outputs: {key: [artifact]}} for the newest run."""
    from ml_metadata.proto import metadata_store_pb2

    store = _store(config)
    runs = [c for c in store.get_contexts_by_type("pipeline_run")]
    if not runs:
        raise RuntimeError(f"no pipeline run recorded in {config.deploy.output}")
    run = max(runs, key=lambda c: c.create_time_since_epoch)
    executions = store.get_executions_by_context(run.id)
    events = store.get_events_by_execution_ids([e.id for e in executions])
    artifacts = {a.id: a for a in store.get_artifacts_by_id(list({ev.artifact_id for ev in events}))}
    states = {v: k for k, v in metadata_store_pb2.Execution.State.items()}
    nodes: Dict[str, Dict[str, Any]] = {}
    for execution in executions:
        node_ctx = [c for c in store.get_contexts_by_execution(execution.id)
                    if store.get_context_types_by_id([c.type_id])[0].name == "node"]
        node = node_ctx[0].name.split(".", 1)[-1] if node_ctx else str(execution.id)
        outputs: Dict[str, List] = {}
        for ev in events:
            if ev.execution_id == execution.id and ev.type in (
                    metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT):
                key = ev.path.steps[0].key if ev.path.steps else "output"
                outputs.setdefault(key, []).append(artifacts[ev.artifact_id])
        nodes[node] = {
            "state": states.get(execution.last_known_state, "UNKNOWN"),
            "seconds": round((execution.last_update_time_since_epoch -
                              execution.create_time_since_epoch) / 1000.0, 1),
            "outputs": outputs,
        }
    return nodes


def _uri(nodes, node, key) -> Optional[str]:
    arts = nodes.get(node, {}).get("outputs", {}).get(key)
    return arts[0].uri if arts else None


def _prop(artifact, name):
    p = artifact.custom_properties.get(name)
    if p is None:
        return None
    return p.int_value if p.HasField("int_value") else p.string_value


def _split_counts(stats_uri: str) -> Dict[str, int]:
    import tensorflow_data_validation as tfdv

    counts = {}
    for split in ("train", "eval"):
        path = os.path.join(stats_uri, f"Split-{split}", "FeatureStats.pb")
        if os.path.exists(path):
            counts[split] = int(tfdv.load_stats_binary(path).datasets[0].num_examples)
    return counts


def read_evaluation(eval_uri: str, class_names: List[str]) -> Dict[str, Any]:
    """Overall metrics, per-class precision/recall/F1 and the confusion matrix."""
    import tensorflow_model_analysis as tfma

    out: Dict[str, Any] = {"slices": {}}
    for m in tfma.load_metrics(eval_uri):
        keys = [f"{s.column}={s.bytes_value.decode() if s.bytes_value else s.int64_value}"
                for s in m.slice_key.single_slice_keys]
        slice_name = ",".join(keys) or "overall"
        values = {}
        for kv in m.metric_keys_and_values:
            # With a blessed baseline TFMA scores both models; the run is the candidate.
            prefix = "baseline_" if kv.key.model_name == "baseline" else ""
            if kv.value.HasField("double_value"):
                values[prefix + kv.key.name + ("_diff" if kv.key.is_diff else "")] = \
                    kv.value.double_value.value
        out["slices"][slice_name] = values
    overall = out["slices"].get("overall", {})
    out["accuracy"] = overall.get(ACCURACY)
    if TOP5 in overall and len(class_names) >= 5:
        out["top5_accuracy"] = overall[TOP5]
    if "example_count" in overall:
        out["example_count"] = int(overall["example_count"])
    n = len(class_names)
    matrix = [[0.0] * n for _ in range(n)]
    for p in tfma.load_plots(eval_uri):
        if p.slice_key.single_slice_keys:
            continue
        for kv in p.plot_keys_and_values:
            cm = kv.value.multi_class_confusion_matrix_at_thresholds
            if kv.key.model_name == "baseline" or not cm.matrices:
                continue
            for e in cm.matrices[0].entries:
                if 0 <= e.actual_class_id < n and 0 <= e.predicted_class_id < n:
                    matrix[e.actual_class_id][e.predicted_class_id] = e.num_weighted_examples
    out["confusion_matrix"] = {"labels": class_names, "matrix": matrix}
    per_class = {}
    for i, name in enumerate(class_names):
        tp = matrix[i][i]
        predicted = sum(matrix[r][i] for r in range(n))
        actual = sum(matrix[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(actual)}
    out["per_class"] = per_class
    if per_class:
        out["macro_f1"] = sum(v["f1"] for v in per_class.values()) / len(per_class)
    return out


def plot_confusion(matrix: List[List[float]], labels: List[str], path: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    # Class-name order, not the vocabulary's (by frequency), so runs compare by eye.
    order = sorted(range(len(labels)), key=lambda i: labels[i])
    m = np.asarray(matrix, dtype=float)[np.ix_(order, order)]
    labels = [labels[i] for i in order]
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = max(5, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 30:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(config: RunConfig, wall_s: Optional[float] = None,
                  peak_rss_mb: Optional[float] = None) -> Dict[str, Any]:
    import tensorflow_transform as tft

    nodes = last_run(config)
    example_gen = next((n for n in nodes if "ExampleGen" in n), None)
    summary: Dict[str, Any] = {
        "backbone": config.model.backbone,
        "mode": config.training.mode,
        "image_size": config.model.image_size,
        "weights": config.model.weights,
        "data": config.data.data,
    }
    transform_uri = _uri(nodes, "Transform", "transform_graph")
    classes = [c.decode() if isinstance(c, bytes) else c for c in
               tft.TFTransformOutput(transform_uri).vocabulary_by_name(
                   contract.LABEL_VOCAB)] if transform_uri else []
    summary["classes"] = classes
    counts = _split_counts(_uri(nodes, "StatisticsGen", "statistics") or "")
    summary["train_examples"] = counts.get("train")
    summary["eval_examples"] = counts.get("eval")
    examples_uri = _uri(nodes, example_gen, "examples") if example_gen else None
    summary["skipped_files"] = _file_list(examples_uri, contract.SKIPPED_FILES_FILE)
    # Notes and metadata beside the images (README.md, labels.csv, .DS_Store):
    # ImageExampleGen leaves them out by name and lists them beside the skipped ones.
    ignored_path = os.path.join(examples_uri or "", contract.IGNORED_FILES_FILE)
    ignored = _file_list(examples_uri, contract.IGNORED_FILES_FILE)
    summary["ignored_files"] = len(ignored)
    summary["ignored_files_list"] = ignored_path if ignored else None

    model_uri = _uri(nodes, "Trainer", "model")
    report_path = os.path.join(model_uri or "", contract.TRAINING_REPORT_FILE)
    if model_uri and os.path.exists(report_path):
        with open(report_path) as f:
            report = json.load(f)
        summary["training"] = {k: report.get(k) for k in (
            "phases", "params", "trainable_params", "strategy", "replicas", "unfrozen_layers",
            "final_val_accuracy", "probe_solver", "setup_s", "build_model_s", "export_s",
            "run_fn_s")}
    eval_uri = _uri(nodes, "Evaluator", "evaluation")
    evaluation = read_evaluation(eval_uri, classes) if eval_uri else {}
    summary["metrics"] = {k: evaluation.get(k) for k in (
        "accuracy", "top5_accuracy", "macro_f1", "per_class", "example_count") if k in evaluation}
    if evaluation:
        summary["metrics"]["slices"] = evaluation["slices"]
    blessing = nodes.get("Evaluator", {}).get("outputs", {}).get("blessing")
    summary["blessed"] = bool(blessing and _prop(blessing[0], "blessed") == 1)
    from tfx_transfer.pipeline import blessing as blessing_rule

    summary["blessing"] = blessing_rule.threshold(config)
    pushed = nodes.get("Pusher", {}).get("outputs", {}).get("pushed_model")
    summary["pushed_model_dir"] = (_prop(pushed[0], "pushed_destination") or None) \
        if pushed and _prop(pushed[0], "pushed") == 1 else None
    # components/atomic_pusher.py: "pushed as version N" or "already serving as version N".
    summary["push_result"] = (_prop(pushed[0], "push_result") or None) if pushed else None
    projector = nodes.get("EmbeddingProjector", {}).get("outputs", {})
    if projector:
        from tfx_transfer.components.embedding_projector import summary_section

        summary["projector"] = summary_section(projector)
    summary["timings_s"] = {n: v["seconds"] for n, v in nodes.items()}
    summary["component_states"] = {n: v["state"] for n, v in nodes.items()}
    if wall_s is not None:
        summary["timings_s"]["total_wall"] = round(wall_s, 1)
    if peak_rss_mb is not None:
        summary["peak_rss_mb"] = round(peak_rss_mb, 1)
    summary["artifacts"] = {n: {k: [a.uri for a in arts] for k, arts in v["outputs"].items()}
                            for n, v in nodes.items()}

    os.makedirs(config.deploy.output, exist_ok=True)
    with open(summary_path(config), "w") as f:
        json.dump(summary, f, indent=1)
    if evaluation.get("confusion_matrix") and classes:
        plot_confusion(evaluation["confusion_matrix"]["matrix"], classes,
                       os.path.join(config.deploy.output, "confusion_matrix.png"),
                       f"{config.model.backbone} {config.training.mode}: accuracy "
                       f"{(summary['metrics'].get('accuracy') or 0):.3f}")
    return summary
