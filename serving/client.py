"""A small client for a classifier served over TF Serving's gRPC API.

    with ServingClient("localhost:8500", "classifier") as client:
        for p in client.predict(["cat.jpg", png_bytes, uint8_array], top_k=3):
            print(p.source, [(c.class_name, c.probability) for c in p.top_k])

It talks to TF Serving or to the local server (serving/server.py) alike. Calls
are bounded by a deadline that covers all attempts; only UNAVAILABLE (server
not up yet, connection lost, no version loaded yet) is retried, with
exponential back-off, because every other status is an answer that a retry
would not change.
"""
from __future__ import annotations

import dataclasses
import io
import os
import random
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import grpc
import numpy as np

from tfx_transfer.modules import keras_compat  # noqa: F401
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tfx_transfer.serving import signatures as sigs
from tfx_transfer.serving.signatures import string_tensor

ImageInput = Union[str, os.PathLike, bytes, bytearray, np.ndarray]
MAX_RESPONSE_BYTES = 256 << 20  # embeddings of a large batch are big; the default is 4 MB


@dataclasses.dataclass
class RetryPolicy:
    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +-20 %: clients that failed together do not retry in lockstep

    def backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return base * (1 + random.uniform(-self.jitter, self.jitter))


class ServingError(Exception):
    """A call that failed for good; `code` is the grpc.StatusCode."""

    def __init__(self, code: grpc.StatusCode, details: str, attempts: int = 1):
        super().__init__(f"{code.name}: {details}" + (f" (after {attempts} attempts)"
                                                       if attempts > 1 else ""))
        self.code, self.details, self.attempts = code, details, attempts


@dataclasses.dataclass
class ClassScore:
    class_id: int
    class_name: Optional[str]  # None when neither the labels nor any response named it
    probability: float


@dataclasses.dataclass
class Prediction:
    source: str
    top_k: List[ClassScore]
    probabilities: np.ndarray
    model_version: int


def encode_image(image: ImageInput) -> Tuple[str, bytes]:
    """(a name for messages, encoded bytes): files are read, arrays become PNG."""
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return os.fspath(image), f.read()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<{len(image)} bytes>", bytes(image)
    if isinstance(image, np.ndarray):
        from PIL import Image

        if image.dtype != np.uint8:
            # Floats may be [0, 1] or [0, 255]; guessing would silently give a black image.
            raise ValueError(f"image arrays must be uint8 (got {image.dtype}); scale and cast first")
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
            raise ValueError(f"image arrays must be HxW, HxWx1, HxWx3 or HxWx4, got {image.shape}")
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        return f"<array {'x'.join(map(str, image.shape))}>", buf.getvalue()
    raise TypeError(f"cannot send {type(image).__name__} as an image: give a path, bytes or "
                    "a uint8 array")


def top_classes(probabilities: np.ndarray, k: int, class_name) -> List[ClassScore]:
    """The k most probable classes, named by class_name(class id)."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [ClassScore(int(i), class_name(int(i)), float(probabilities[i])) for i in order]


def read_labels(path: str) -> List[str]:
    """A vocabulary file: line i names class id i (the model's assets/label)."""
    with open(path) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


class ServingClient:
    def __init__(self, target: str, model_name: str,
                 signature_name: str = sigs.SERVING_IMAGES,
                 version: Optional[int] = None, version_label: Optional[str] = None,
                 timeout_s: float = 30.0, retry: Optional[RetryPolicy] = None,
                 tls: bool = False, root_certificates: Optional[bytes] = None,
                 private_key: Optional[bytes] = None, certificate_chain: Optional[bytes] = None,
                 server_name: Optional[str] = None, labels: Optional[Sequence[str]] = None,
                 channel_options: Sequence[Tuple[str, object]] = ()):
        if version is not None and version_label:
            raise ValueError("give a version or a version label, not both")
        self.target, self.model_name, self.signature_name = target, model_name, signature_name
        self.version, self.version_label = version, version_label
        self.timeout_s, self.retry = timeout_s, retry or RetryPolicy()
        self.labels = list(labels) if labels else None
        # class id -> name seen in responses: the model names its top-1 class only.
        self._seen_names: Dict[int, str] = {}
        self._kinds: Dict[str, Tuple[str, str]] = dict(sigs.SIGNATURE_INPUTS)
        options = [("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
                   ("grpc.max_send_message_length", -1)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        # e.g. ("grpc.lb_policy_name", "round_robin") with a dns:/// target of a headless Service
        options += list(channel_options)
        if tls or root_certificates or certificate_chain:
            creds = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    # -- plumbing ----------------------------------------------------------
    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spec(self, target, signature_name: Optional[str] = None):
        target.name = self.model_name
        if signature_name is not None:
            target.signature_name = signature_name
        if self.version is not None:
            target.version.value = self.version
        elif self.version_label:
            target.version_label = self.version_label

    def _call(self, method, request):
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=max(deadline - time.monotonic(), 1e-3))
            except grpc.RpcError as e:
                code = e.code()
                retry = code == grpc.StatusCode.UNAVAILABLE and attempt < self.retry.max_attempts
                pause = self.retry.backoff(attempt)
                if not retry or time.monotonic() + pause >= deadline:
                    raise ServingError(code, e.details() or "", attempt) from None
                time.sleep(pause)

    # -- API -----------------------------------------------------------------
    def predict_tensors(self, inputs: Dict[str, Union[tensor_pb2.TensorProto, np.ndarray]],
                        signature_name: Optional[str] = None,
                        output_filter: Iterable[str] = ()) -> Tuple[Dict[str, np.ndarray], int]:
        """One raw Predict: (outputs as arrays, the version that answered)."""
        import tensorflow as tf

        request = predict_pb2.PredictRequest(output_filter=list(output_filter))
        self._spec(request.model_spec, signature_name or self.signature_name)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto)
                                         else tf.make_tensor_proto(value))
        response = self._call(self._predict.Predict, request)
        outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
        return outputs, response.model_spec.version.value

    def predict(self, images: Iterable[ImageInput], top_k: int = 5, batch_size: int = 32,
                signature_name: Optional[str] = None) -> List[Prediction]:
        """Top-k classes of each image, in input order, sent `batch_size` images a request."""
        if batch_size < 1 or top_k < 1:
            raise ValueError("batch_size and top_k must be >= 1")
        signature_name = signature_name or self.signature_name
        key, kind = self._input_of(signature_name)
        encoded = [encode_image(image) for image in images]
        results: List[Prediction] = []
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            payload = [data if kind == sigs.IMAGES else sigs.image_example(data)
                       for _, data in chunk]
            outputs, version = self.predict_tensors(
                {key: string_tensor(payload)}, signature_name,
                # No output filter: models exported before `classes` existed lack it,
                # and TF Serving refuses a filter naming an unknown output.
                output_filter=())
            probs = np.asarray(outputs[sigs.PROBABILITIES], dtype=np.float32)
            if sigs.CLASSES in outputs and len(outputs[sigs.CLASSES]):
                for cid, name in enumerate(outputs[sigs.CLASSES][0]):
                    self._seen_names[cid] = name.decode()
            for cid, name in zip(outputs[sigs.CLASS_IDS], outputs[sigs.CLASS_NAMES]):
                self._seen_names[int(cid)] = name.decode()
            for (source, _), row in zip(chunk, probs):
                results.append(Prediction(source, self.top_classes(row, top_k), row, version))
        return results

    def top_classes(self, probabilities: np.ndarray, k: int) -> List[ClassScore]:
        return top_classes(probabilities, k, self.class_name)

    def class_name(self, class_id: int) -> Optional[str]:
        if self.labels and class_id < len(self.labels):
            return self.labels[class_id]
        return self._seen_names.get(class_id)

    def classify(self, images: Iterable[ImageInput],
                 signature_name: str = sigs.CLASSIFICATION) -> List[List[Tuple[str, float]]]:
        """Classify API: (label, score) of every class per image, as the server orders them."""
        from tensorflow.core.example import example_pb2

        request = classification_pb2.ClassificationRequest()
        self._spec(request.model_spec, signature_name)
        for _, data in (encode_image(image) for image in images):
            request.input.example_list.examples.append(
                example_pb2.Example.FromString(sigs.image_example(data)))
        response = self._call(self._predict.Classify, request)
        return [[(c.label, c.score) for c in r.classes]
                for r in response.result.classifications]

    def metadata(self) -> Dict[str, dict]:
        """GetModelMetadata: signature name -> {inputs, outputs: name -> (dtype, shape), method}."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        response = self._call(self._predict.GetModelMetadata, request)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)

        def tensors(infos):
            return {k: (types_pb2.DataType.Name(v.dtype),
                        None if v.tensor_shape.unknown_rank else
                        [d.size for d in v.tensor_shape.dim]) for k, v in infos.items()}

        return {name: {"inputs": tensors(s.inputs), "outputs": tensors(s.outputs),
                       "method_name": s.method_name, "version": response.model_spec.version.value}
                for name, s in sig_map.signature_def.items()}

    def status(self) -> List[dict]:
        """GetModelStatus: one dict per version the server knows, newest first."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self._call(self._models.GetModelStatus, request)
        state = get_model_status_pb2.ModelVersionStatus.State
        return [{"version": s.version, "state": state.Name(s.state),
                 "error_code": s.status.error_code, "error_message": s.status.error_message}
                for s in response.model_version_status]

    def wait_until_available(self, timeout_s: float = 60.0) -> int:
        """Blocks until a version is AVAILABLE (works with TF Serving too); returns it."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                available = [s["version"] for s in self.status() if s["state"] == "AVAILABLE"]
                if available:
                    return max(available)
                last = "no version AVAILABLE yet"
            except ServingError as e:
                if e.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                last = str(e)
            if time.monotonic() >= deadline:
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"model '{self.model_name}' not available after {timeout_s}s: "
                                   f"{last}")
            time.sleep(0.2)

    def _input_of(self, signature_name: str) -> Tuple[str, str]:
        """(input key, IMAGES or EXAMPLES) of a signature, asking the server when not known."""
        if signature_name not in self._kinds:
            sig = self.metadata().get(signature_name)
            if sig is None:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"model '{self.model_name}' has no signature '{signature_name}'")
            keys = [k for k, (dtype, _) in sig["inputs"].items() if dtype == "DT_STRING"]
            if len(sig["inputs"]) != 1 or not keys or keys[0] not in sigs.INPUT_KINDS:
                raise ValueError(f"signature '{signature_name}' does not take images or tf.Examples "
                                 f"of images (inputs: {sig['inputs']}); use predict_tensors")
            self._kinds[signature_name] = (keys[0], sigs.INPUT_KINDS[keys[0]])
        return self._kinds[signature_name]
