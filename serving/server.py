"""A local gRPC server on TF Serving's own API, for development without Docker.

    tfx-transfer serve --model-base-path runs/demo/serving/classifier --model-name classifier

It serves the SavedModel versions the Pusher wrote under <base path>/<version>/
through ``tensorflow.serving.PredictionService`` (Predict, Classify,
GetModelMetadata) and ``tensorflow.serving.ModelService`` (GetModelStatus), so a
client written against it works unchanged against TF Serving. Production runs
TF Serving itself (k8s/serving/); this is the stand-in for a laptop and tests.

Like TF Serving it polls the base path, loads a newly pushed version and then
unloads the old one (the old one keeps answering until the new one is loaded
and warmed up), and keeps the last good version when a new one fails to load.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import re
import socket
import threading
import time
from concurrent import futures
from typing import Dict, List, Optional, Tuple

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tfx_transfer.modules import keras_compat  # noqa: F401
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc, status_pb2)

from tfx_transfer.modules import image_budget
from tfx_transfer.serving import signatures as sigs
from tfx_transfer.serving.protocol import (DEFAULT_SIGNATURE, RequestError, as_proto_field,  # noqa: F401
                              signature_of as _signature)
from tfx_transfer.serving import warmup as warmup_file

log = logging.getLogger("tfx_transfer.serving")

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
State = get_model_status_pb2.ModelVersionStatus.State
_VERSION_NAME = re.compile(r"[0-9]+")
_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype)


def _shape_of(tensor_shape) -> Optional[List[int]]:
    return None if tensor_shape.unknown_rank else [d.size for d in tensor_shape.dim]


def _tf_message(e: tf.errors.OpError) -> str:
    """The line of a TF error that says what was wrong, without graph noise."""
    lines = [l.strip() for l in (e.message or "").splitlines()]
    useful = [l for l in lines if l and not l.startswith(
        ("Graph execution error", "Detected at node", "<stack traces", "[[{{node"))]
    text = " ".join(useful) or type(e).__name__
    return text.split(" [Op:")[0].split("\t [[")[0].strip()


# --------------------------------------------------------------------------
# A loaded version
@dataclasses.dataclass
class LoadedVersion:
    version: int
    path: str
    model: object  # a tf.compat.v1.Session on the version's graph, or a tf.saved_model.load object
    signature_defs: Dict[str, object]  # name -> meta_graph_pb2.SignatureDef
    labels: Optional[List[str]]  # the class vocabulary, when the model carries it

    def run(self, signature: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if isinstance(self.model, tf.compat.v1.Session):
            sig = self.signature_defs[signature]
            return self.model.run({k: v.name for k, v in sig.outputs.items()},
                                  feed_dict={sig.inputs[k].name: v for k, v in inputs.items()})
        fn = self.model.signatures[signature]
        out = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}


def _warmup_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (127, 127, 127)).save(buf, format="PNG")
    return buf.getvalue()


# How a version is loaded. "session", as TF Serving does it (a Session on the
# MetaGraph, running the signatures' tensors), takes about a third of the time of
# "object" (tf.saved_model.load), which rebuilds every Keras layer's saved
# function in Python (benchmarks/serving_startup.py).
LOADERS = ("session", "object")


def load_version(path: str, version: int, warmup: bool = True,
                 loader: str = "session") -> LoadedVersion:
    """Loads and warms up one version; raises when it cannot serve."""
    if loader == "session":
        graph = tf.Graph()
        model = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(model, ["serve"], path)
        defs = {k: v for k, v in meta.signature_def.items() if not k.startswith("__")}
    else:
        model = tf.saved_model.load(path, tags=["serve"])
        with tf.io.gfile.GFile(f"{path}/saved_model.pb", "rb") as f:
            saved = saved_model_pb2.SavedModel.FromString(f.read())
        meta = next(m for m in saved.meta_graphs if "serve" in m.meta_info_def.tags)
        defs = {k: v for k, v in meta.signature_def.items()
                if not k.startswith("__") and k in model.signatures}
    labels = None
    labels_path = f"{path}/assets/{sigs.LABELS_ASSET}"
    if tf.io.gfile.exists(labels_path):
        with tf.io.gfile.GFile(labels_path) as f:
            labels = [l.rstrip("\n") for l in f if l.strip()]
    loaded = LoadedVersion(version, path, model, defs, labels)
    if warmup:
        _warm_up(loaded)
    return loaded


def _warm_up(loaded: LoadedVersion, use_file: bool = True) -> None:
    """The first call of a function pays for graph optimisation; pay it here, not
    on a client's request, and refuse a version that cannot run. Like TF Serving
    (servables/tensorflow/saved_model_warmup.cc) a failing warmup request fails
    the load."""
    logs = warmup_file.read(loaded.path) if use_file else []
    if logs:
        for signature, inputs in warmup_file.replayable(logs):
            name, _ = _signature(loaded, signature)
            loaded.run(name, {k: _to_array(k, v) for k, v in inputs.items()})
        return
    png = _warmup_png()
    for name, (key, kind) in sigs.SIGNATURE_INPUTS.items():
        if name in loaded.signature_defs and key in loaded.signature_defs[name].inputs:
            element = png if kind == sigs.IMAGES else sigs.image_example(png)
            loaded.run(name, {key: np.array([element], dtype=object)})


# --------------------------------------------------------------------------
# Versions on disk -> versions served
class VersionManager:
    """Polls <base_path>/<version>/ and keeps the newest `num_versions` loaded."""

    def __init__(self, base_path: str, model_name: str, num_versions: int = 1,
                 version_labels: Optional[Dict[str, int]] = None, poll_interval_s: float = 2.0,
                 on_change=None):
        self.base_path, self.model_name = base_path.rstrip("/"), model_name
        self.num_versions, self.poll_interval_s = max(1, num_versions), poll_interval_s
        self.version_labels = dict(version_labels or {})
        self._on_change = on_change  # called with whether any version is loaded
        self._lock = threading.Lock()
        self._loaded: Dict[int, LoadedVersion] = {}
        self._status: Dict[int, Tuple[int, int, str]] = {}  # version -> (state, code, message)
        self._failed: Dict[int, tuple] = {}  # version -> stamp of the files that failed
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._warned_empty = False

    # -- polling ---------------------------------------------------------
    def on_disk(self) -> Dict[int, str]:
        """Versions whose saved_model.pb exists (the Pusher copies it last)."""
        try:
            names = tf.io.gfile.listdir(self.base_path)
        except tf.errors.NotFoundError:
            return {}
        found = {}
        for name in names:
            name = name.rstrip("/")
            path = f"{self.base_path}/{name}"
            # str.isdigit() accepts '²', which int() refuses: ASCII digits only.
            if _VERSION_NAME.fullmatch(name) and tf.io.gfile.exists(f"{path}/saved_model.pb"):
                found[int(name)] = path
        return found

    @staticmethod
    def _stamp(path: str) -> tuple:
        """Every file's (path, size, mtime): a failed version is retried when any of
        them changes (its variables/ may land after its saved_model.pb)."""
        files = []
        for folder, _, names in tf.io.gfile.walk(path):
            for name in names:
                st = tf.io.gfile.stat(f"{folder}/{name}")
                files.append((f"{folder}/{name}", st.length, st.mtime_nsec))
        return tuple(sorted(files))

    def poll_once(self) -> None:
        disk = self.on_disk()
        if not disk and not self._warned_empty:
            log.warning("no version of %s under %s yet (waiting for <version>/saved_model.pb)",
                        self.model_name, self.base_path)
            self._warned_empty = True
        # The newest `num_versions` versions that load, tried newest first: when
        # the served version is removed or a new one fails, the next older
        # loadable one serves after this same poll.
        wanted = []
        for v in sorted(disk, reverse=True):
            if len(wanted) == self.num_versions:
                break
            if v in self._loaded or self._load(v, disk[v]):
                wanted.append(v)
        for v in list(self._loaded):
            if v not in wanted:
                with self._lock:
                    del self._loaded[v]
                self._set_status(v, State.END)
                log.info("unloaded %s version %d", self.model_name, v)
        if self._on_change:
            self._on_change(bool(self._loaded))

    def _load(self, v: int, path: str) -> bool:
        stamp = self._stamp(path)
        if self._failed.get(v) == stamp:
            return False
        self._set_status(v, State.LOADING)
        start = time.time()
        try:
            loaded = load_version(path, v)
        except Exception as e:  # noqa: BLE001 - any failure means: keep serving the old one
            log.error("cannot load %s version %d from %s: %s", self.model_name, v, path, e)
            self._failed[v] = stamp
            self._set_status(v, State.END, grpc.StatusCode.UNKNOWN.value[0],
                             f"load failed: {e}"[:2000])
            return False
        self._failed.pop(v, None)
        with self._lock:
            self._loaded[v] = loaded
        self._set_status(v, State.AVAILABLE)
        log.info("serving %s version %d from %s (loaded in %.1fs)", self.model_name, v, path,
                 time.time() - start)
        return True

    def _set_status(self, version, state, code=0, message=""):
        with self._lock:
            self._status[version] = (state, code, message)

    def _loop(self):
        while True:
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - a flaky file system must not end polling
                log.exception("polling %s failed", self.base_path)
            if self._stop.wait(self.poll_interval_s):
                return

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="version-poller", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=60)

    # -- requests --------------------------------------------------------
    def loaded(self) -> Dict[int, LoadedVersion]:
        with self._lock:
            return dict(self._loaded)

    def status(self) -> Dict[int, Tuple[int, int, str]]:
        with self._lock:
            return dict(self._status)

    def check_name(self, spec) -> None:
        if not spec.name:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"model_spec.name is empty; this server serves '{self.model_name}'")
        if spec.name != self.model_name:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model '{spec.name}' is not served here; this server serves "
                               f"'{self.model_name}'")

    def resolve(self, spec) -> LoadedVersion:
        """The loaded version a ModelSpec asks for (by number, label, or the newest)."""
        self.check_name(spec)
        loaded = self.loaded()
        which = spec.WhichOneof("version_choice")
        if which == "version_label":
            label = spec.version_label
            if label not in self.version_labels:
                known = ", ".join(sorted(self.version_labels)) or "none configured"
                # INVALID_ARGUMENT as TF Serving's ServerCore::GetModelVersionForLabel.
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {label} "
                                   f"(labels: {known})")
            version = self.version_labels[label]
        elif which == "version":
            version = spec.version.value
        else:
            if not loaded:
                # NOT_FOUND as TF Serving's BasicManager (core/basic_manager.cc) when
                # every version is gone; the ports are not open before the first load.
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Latest({self.model_name}): "
                                   f"no version of model '{self.model_name}' is loaded "
                                   f"(base path {self.base_path})")
            return loaded[max(loaded)]
        if version not in loaded:
            served = ", ".join(map(str, sorted(loaded))) or "none"
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"version {version} of model '{self.model_name}' is not loaded "
                               f"(loaded: {served})")
        return loaded[version]


# --------------------------------------------------------------------------
# Request checks
def _describe(info) -> str:
    return f"{_dtype_name(info.dtype)} {_shape_of(info.tensor_shape)}"


def _to_array(key: str, proto) -> np.ndarray:
    shape = _shape_of(proto.tensor_shape) or []
    if any(d < 0 for d in shape):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input '{key}' has shape {shape}")
    count = int(np.prod(shape)) if shape else 1
    if proto.dtype == types_pb2.DT_STRING:
        # tf.make_ndarray pads a short string list with copies of its last value.
        if len(proto.string_val) != count:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input '{key}' has shape {shape} ({count} elements) but holds "
                               f"{len(proto.string_val)} strings")
        return np.array(list(proto.string_val), dtype=object).reshape(shape)
    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # noqa: BLE001 - any malformed tensor is the caller's mistake
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input '{key}' is not a valid {_dtype_name(proto.dtype)} tensor: {e}")


class Limits:
    def __init__(self, max_batch_size: int = 64, max_image_pixels: int = 4096 * 4096,
                 budget: Optional[image_budget.ImageBudget] = None):
        self.max_batch_size, self.max_image_pixels = max_batch_size, max_image_pixels
        # The pipeline's budget (frames, decoded bytes), with this server's pixel limit.
        self.budget = dataclasses.replace(budget or image_budget.ImageBudget(),
                                          max_pixels=max_image_pixels)


def check_inputs(sig_name: str, sig, tensors, limits: Limits) -> Dict[str, np.ndarray]:
    """Request tensors -> arrays, or a RequestError that names what is wrong."""
    expected = dict(sig.inputs)
    wanted = ", ".join(f"'{k}' ({_describe(v)})" for k, v in sorted(expected.items()))
    unknown = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if unknown or missing:
        what = (f"unknown input(s) {unknown}" if unknown else "") + \
               ("; " if unknown and missing else "") + \
               (f"missing input(s) {missing}" if missing else "")
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{what}; signature '{sig_name}' takes {wanted}")
    arrays = {}
    for key, info in expected.items():
        proto = tensors[key]
        if proto.dtype != info.dtype:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input '{key}' has dtype {_dtype_name(proto.dtype)}; signature "
                               f"'{sig_name}' expects {_dtype_name(info.dtype)}")
        got, want = _shape_of(proto.tensor_shape), _shape_of(info.tensor_shape)
        if got is None or (want is not None and (
                len(got) != len(want) or any(w >= 0 and w != g for g, w in zip(got, want)))):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input '{key}' has shape {got}; signature '{sig_name}' expects "
                               f"{want} (-1: any size)")
        if got and got[0] == 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"empty batch: input '{key}' holds no elements")
        if got and got[0] > limits.max_batch_size:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"batch of {got[0]} is over this server's limit of "
                               f"{limits.max_batch_size}; send smaller batches")
        arrays[key] = _to_array(key, proto)
    contract = sigs.SIGNATURE_INPUTS.get(sig_name)
    if contract and contract[0] in arrays:
        _check_images(contract[0], contract[1], arrays[contract[0]], limits)
    return arrays


def _check_images(key: str, kind: str, values: np.ndarray, limits: Limits) -> None:
    """Checks every image against the budget before the graph decodes it, and makes
    EXIF-rotated JPEGs upright in place, as ImageExampleGen did for training."""
    for i, value in enumerate(values.flat):
        try:
            image = sigs.image_of_example(value) if kind == sigs.EXAMPLES else value
            sigs.check_image(image, limits.max_image_pixels)
            header = image_budget.check(image, limits.budget)
            upright = image_budget.upright(image, header)
        except (sigs.ImageTooLarge, image_budget.OverBudget) as e:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{key}[{i}]: image {e}")
        except ValueError as e:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{key}[{i}]: {e}")
        if upright is not image:
            values.flat[i] = _with_image(value, upright) if kind == sigs.EXAMPLES else upright


def _with_image(serialized: bytes, image: bytes) -> bytes:
    example = tf.train.Example.FromString(serialized)
    example.features.feature[sigs.IMAGE_FEATURE].bytes_list.value[0] = image
    return example.SerializeToString()


# --------------------------------------------------------------------------
# Services
def _rpc(method):
    """Turns every failure of a handler into a status; nothing escapes to kill a worker."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except RequestError as e:
            log.info("%s: %s %s", method.__name__, e.code.name, e.message)
            context.abort(e.code, e.message)
        except tf.errors.OpError as e:
            code = _CODES.get(e.error_code, grpc.StatusCode.INTERNAL)
            log.info("%s: %s %s", method.__name__, code.name, _tf_message(e))
            context.abort(code, _tf_message(e))
        except Exception as e:  # noqa: BLE001
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
    return wrapper


def _response_spec(target, loaded: LoadedVersion, model_name: str, signature: str = ""):
    target.name = model_name
    target.version.value = loaded.version
    if signature:
        target.signature_name = signature


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: VersionManager, limits: Limits):
        self.manager, self.limits = manager, limits

    @_rpc
    def Predict(self, request, context):
        loaded = self.manager.resolve(request.model_spec)
        name, sig = _signature(loaded, request.model_spec.signature_name)
        arrays = check_inputs(name, sig, request.inputs, self.limits)
        unknown = sorted(set(request.output_filter) - set(sig.outputs))
        if unknown:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output_filter names unknown output(s) {unknown}; signature "
                               f"'{name}' has {sorted(sig.outputs)}")
        outputs = loaded.run(name, arrays)
        response = predict_pb2.PredictResponse()
        _response_spec(response.model_spec, loaded, self.manager.model_name, name)
        for key, value in outputs.items():
            if not request.output_filter or key in request.output_filter:
                response.outputs[key].CopyFrom(as_proto_field(value))
        return response

    @_rpc
    def Classify(self, request, context):
        loaded = self.manager.resolve(request.model_spec)
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        sig = loaded.signature_defs.get(name)
        if sig is None:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"No signature was found with the name: {name}")
        _classification_contract(name, sig)
        examples = _examples_of(request.input)
        arrays = check_inputs(name, sig, {sigs.CLASSIFY_INPUT: sigs.string_tensor(examples)},
                              self.limits)
        outputs = loaded.run(name, arrays)
        classes = outputs.get(sigs.CLASSIFY_CLASSES)
        scores = outputs.get(sigs.CLASSIFY_SCORES)
        response = classification_pb2.ClassificationResponse()
        _response_spec(response.model_spec, loaded, self.manager.model_name, name)
        for i in range(len(examples)):
            result = response.result.classifications.add()
            width = (classes if classes is not None else scores).shape[1]
            for j in range(width):
                c = result.classes.add()
                if classes is not None:
                    c.label = classes[i][j].decode("utf-8", "replace")
                if scores is not None:
                    c.score = float(scores[i][j])
        return response

    @_rpc
    def Regress(self, request, context):
        # TF Serving (servables/tensorflow/regressor.cc) refuses a signature that is
        # not one input `inputs` -> one output `outputs`; the classifier has none.
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "Regress: the classifier has no regression signature (one input "
                           "'inputs', one output 'outputs'); use Predict")

    @_rpc
    def MultiInference(self, request, context):
        raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                           "MultiInference is not implemented by the local server; use Predict")

    @_rpc
    def GetModelMetadata(self, request, context):
        loaded = self.manager.resolve(request.model_spec)
        fields = list(request.metadata_field)
        if not fields:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "metadata_field is empty; ask for 'signature_def'")
        unsupported = [f for f in fields if f != "signature_def"]
        if unsupported:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"metadata field(s) {unsupported} not supported; only "
                               "'signature_def'")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _response_spec(response.model_spec, loaded, self.manager.model_name)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in loaded.signature_defs.items():
            sig_map.signature_def[name].CopyFrom(sig)
        response.metadata["signature_def"].Pack(sig_map)
        return response


def _classification_contract(name: str, sig) -> None:
    """What TF Serving's PreProcessClassification (servables/tensorflow/classifier.cc)
    demands of a signature, with its messages, all INVALID_ARGUMENT."""
    def refuse(message):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{message} (signature '{name}'; Classify wants "
                           f"'{sigs.CLASSIFICATION}' or another signature taking "
                           f"'{sigs.CLASSIFY_INPUT}' to '{sigs.CLASSIFY_CLASSES}'/"
                           f"'{sigs.CLASSIFY_SCORES}')")
    if len(sig.inputs) != 1:
        refuse("Expected one input Tensor.")
    if len(sig.outputs) not in (1, 2):
        refuse(f"Expected one or two output Tensors, found {len(sig.outputs)}")
    if sigs.CLASSIFY_INPUT not in sig.inputs:
        refuse(f"No classification inputs found in SignatureDef (inputs: {sorted(sig.inputs)})")
    if not {sigs.CLASSIFY_CLASSES, sigs.CLASSIFY_SCORES} & set(sig.outputs):
        refuse('Expected classification signature outputs to contain at least one of '
               f'"{sigs.CLASSIFY_CLASSES}" or "{sigs.CLASSIFY_SCORES}"')


def _examples_of(input_proto) -> List[bytes]:
    which = input_proto.WhichOneof("kind")
    if which == "example_list":
        examples = list(input_proto.example_list.examples)
    elif which == "example_list_with_context":
        ctx = input_proto.example_list_with_context.context
        examples = []
        for e in input_proto.example_list_with_context.examples:
            merged = type(ctx)()
            merged.CopyFrom(ctx)
            merged.MergeFrom(e)
            examples.append(merged)
    else:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "Classify request has no input "
                           "(input.example_list or input.example_list_with_context)")
    return [e.SerializeToString() for e in examples]


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: VersionManager):
        self.manager = manager

    @_rpc
    def GetModelStatus(self, request, context):
        spec = request.model_spec
        self.manager.check_name(spec)
        status = self.manager.status()
        which = spec.WhichOneof("version_choice")
        if which == "version_label":
            if spec.version_label not in self.manager.version_labels:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {spec.version_label}")
            versions = [self.manager.version_labels[spec.version_label]]
        elif which == "version":
            versions = [spec.version.value]
        else:
            versions = sorted(status, reverse=True)
        if not versions:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"no version of model '{self.manager.model_name}' found yet "
                               f"under {self.manager.base_path}")
        if versions[0] not in status:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"version {versions[0]} of model '{self.manager.model_name}' is "
                               f"unknown to this server (known: {sorted(status) or 'none'})")
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in versions:
            state, code, message = status[v]
            response.model_version_status.add(
                version=v, state=state,
                status=status_pb2.StatusProto(error_code=code, error_message=message))
        return response

    @_rpc
    def HandleReloadConfigRequest(self, request, context):
        raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                           "the local server serves one model from --model-base-path and has no "
                           "model config to reload")


# --------------------------------------------------------------------------
class ModelServer:
    """The gRPC (and REST) server: start(), wait_until_available(), stop().

    Like TF Serving (model_servers/server.cc builds ServerCore, which waits for
    the initial load, before it builds and starts the gRPC and HTTP servers),
    the ports open only once the first version is AVAILABLE: a client that
    connects as soon as the port opens gets an answer on its first call.
    """

    def __init__(self, model_base_path: str, model_name: str, port: int = 0,
                 host: str = "127.0.0.1", max_batch_size: int = 64,
                 max_payload_bytes: int = 16 << 20, max_image_pixels: int = 4096 * 4096,
                 num_versions: int = 1, version_labels: Optional[Dict[str, int]] = None,
                 poll_interval_s: float = 2.0, max_workers: int = 8,
                 max_concurrent_requests: Optional[int] = None,
                 tls_cert: Optional[bytes] = None, tls_key: Optional[bytes] = None,
                 tls_client_ca: Optional[bytes] = None, rest_api_port: Optional[int] = None):
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("TLS needs both the server certificate and its private key")
        # A taken port is reported now, not after a load of many seconds.
        for p in (port, rest_api_port):
            if p:
                _check_bindable(host, p)
        self.health = health.HealthServicer()
        self._service_names = ("", model_name, PREDICTION_SERVICE, MODEL_SERVICE)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.manager = VersionManager(model_base_path, model_name, num_versions, version_labels,
                                      poll_interval_s, on_change=self._on_change)
        self.limits = Limits(max_batch_size, max_image_pixels)
        self._host, self._port, self._rest_port = host, port, rest_api_port
        self._max_payload_bytes, self._max_workers = max_payload_bytes, max_workers
        self._max_concurrent = max_concurrent_requests
        self._tls = (tls_cert, tls_key, tls_client_ca)
        self._server = self.rest = None
        self.port = self.address = self.rest_address = None
        self._available = threading.Event()
        self._open_error: Optional[Exception] = None
        self._stopping = False

    def _open_ports(self) -> None:
        # gRPC itself answers RESOURCE_EXHAUSTED to a message over the limit and
        # to requests beyond max_concurrent_requests, before any handler runs.
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="rpc"),
            options=[("grpc.max_receive_message_length", self._max_payload_bytes),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=self._max_concurrent)
        prediction = PredictionService(self.manager, self.limits)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(self.manager), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        address = f"{self._host}:{self._port}"
        cert, key, client_ca = self._tls
        if cert:
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                                require_client_auth=client_ca is not None)
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
        if not port:
            raise OSError(f"cannot bind {address}")
        if self._rest_port is not None:
            from tfx_transfer.serving.rest import RestServer

            self.rest = RestServer(prediction, ModelService(self.manager), self._host,
                                   self._rest_port, self._max_payload_bytes)
            self.rest_address = self.rest.address
        server.start()
        if self.rest:
            self.rest.start()
        self._server, self.port, self.address = server, port, f"{self._host}:{port}"
        log.info("local model server for '%s' on %s%s (base path %s)", self.manager.model_name,
                 self.address, f", REST API on http://{self.rest_address}" if self.rest else "",
                 self.manager.base_path)

    def _set_health(self, status):
        for name in self._service_names:
            self.health.set(name, status)

    def _on_change(self, serving: bool):
        if self._stopping:
            return
        self._set_health(health_pb2.HealthCheckResponse.SERVING if serving
                         else health_pb2.HealthCheckResponse.NOT_SERVING)
        if serving and not self._available.is_set():
            try:
                self._open_ports()
            except Exception as e:  # noqa: BLE001 - reported by wait_until_available
                log.error("cannot open the server's ports: %s", e)
                self._open_error = e
            self._available.set()

    def start(self) -> "ModelServer":
        """Starts loading; the ports open when the first version is AVAILABLE."""
        self.manager.start()
        log.info("loading '%s' from %s; ports open once a version is AVAILABLE",
                 self.manager.model_name, self.manager.base_path)
        return self

    def wait_until_available(self, timeout: Optional[float] = None) -> bool:
        """True once the ports are open (a version is AVAILABLE); raises if they cannot be."""
        ready = self._available.wait(timeout)
        if self._open_error:
            raise self._open_error
        return ready

    def stop(self, grace: float = 5.0) -> None:
        """Refuses new requests, lets running ones finish for up to `grace` seconds."""
        self._stopping = True
        self.health.enter_graceful_shutdown()
        if self.rest:
            self.rest.stop()
        if self._server:
            self._server.stop(grace).wait()
        self.manager.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(grace=1.0)


def _check_bindable(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC and http.server do
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot bind {host}:{port}: {e.strerror}") from None
