"""Reading a SavedModel's warmup file (TF Serving's format) to replay it at load.

The export writes it (modules/warmup.py); TF Serving replays it while loading a
version (servables/tensorflow/saved_model_warmup.cc), and so does the local
server (serving/server.py `load_version`).
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

from tfx_transfer.modules.warmup import warmup_path


def read(export_dir: str) -> list:
    """The PredictionLogs of a version's warmup file; [] when it has none."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = warmup_path(export_dir)
    if not tf.io.gfile.exists(path):
        return []
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(path)]


def replayable(logs) -> Iterable[Tuple[str, Dict[str, object]]]:
    """(signature name, {input key: TensorProto}) of each Predict or Classify log."""
    from tfx_transfer.serving import signatures as sigs

    for log in logs:
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            spec = log.predict_log.request.model_spec
            yield spec.signature_name, dict(log.predict_log.request.inputs)
        elif kind == "classify_log":
            request = log.classify_log.request
            name = request.model_spec.signature_name or sigs.SERVING_DEFAULT
            key = sigs.SIGNATURE_INPUTS.get(name, (sigs.EXAMPLES_INPUT,))[0]
            examples = [e.SerializeToString() for e in request.input.example_list.examples]
            yield name, {key: sigs.string_tensor(examples)}
        else:
            raise ValueError(f"warmup record of type {kind!r} is not supported by the local "
                             "server (Predict and Classify are)")
