"""TF Serving's REST API on the local server (`tfx-transfer serve --rest-api-port`).

    GET  /v1/models/NAME[/versions/N|/labels/L]            model status
    GET  /v1/models/NAME[/versions/N|/labels/L]/metadata   signature defs
    POST /v1/models/NAME[/versions/N|/labels/L]:predict    {"instances": [...]} or {"inputs": ...}
    POST /v1/models/NAME[/versions/N|/labels/L]:classify   {"examples": [...], "context": {...}}

What TF Serving does is taken from model_servers/http_rest_api_handler.cc (the
routes, "Malformed request" for anything else), util/json_tensor.cc (the JSON
of tensors and examples, {"b64": ...} for bytes, `_bytes` outputs encoded so),
model_servers/http_server.cc (ToHTTPStatusCode) and docs/api_rest.md. Every
request goes through the same gRPC servicers, so limits, checks and error
messages are the gRPC API's; only the encoding differs.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional

import grpc
import numpy as np

from tfx_transfer.modules import keras_compat  # noqa: F401
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, predict_pb2, regression_pb2)

from tfx_transfer.serving import protocol

log = logging.getLogger("tfx_transfer.serving.rest")

B64 = "b64"
BYTES_SUFFIX = "_bytes"  # json_tensor.cc: string outputs named *_bytes are sent as {"b64": ...}
# http_server.cc ToHTTPStatusCode
HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.UNAUTHENTICATED: 401,
}
_SPEC = r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?"
_INFER = re.compile(_SPEC + r":(predict|classify|regress)", re.IGNORECASE)
_STATUS = re.compile(_SPEC + r"(/metadata)?", re.IGNORECASE)
_NUMPY = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
          types_pb2.DT_INT32: np.int32, types_pb2.DT_INT64: np.int64,
          types_pb2.DT_UINT8: np.uint8, types_pb2.DT_BOOL: np.bool_}


def _bad(message: str) -> protocol.RequestError:
    return protocol.RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


class _Context:
    """What the gRPC servicers need of a context: abort() becomes a RequestError."""

    def abort(self, code, message):
        raise protocol.RequestError(code, message)


# --------------------------------------------------------------------------
# JSON -> tensors
def _decode(value):
    """A JSON value with {"b64": ...} objects replaced by their bytes."""
    if isinstance(value, dict):
        if set(value) == {B64}:
            try:
                return base64.b64decode(value[B64], validate=True)
            except (ValueError, TypeError):
                raise _bad(f"'{B64}' value is not valid base64") from None
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _tensor(key: str, value, dtype: int):
    if dtype == types_pb2.DT_STRING:
        array = np.array(value, dtype=object)
        flat = array.reshape(-1)
        for i, v in enumerate(flat):
            if isinstance(v, str):
                flat[i] = v.encode()
            elif not isinstance(v, bytes):
                raise _bad(f"input '{key}' takes strings (or {{\"{B64}\": ...}} for bytes), "
                           f"got {type(v).__name__}")
        return protocol.as_proto_field(array)
    if dtype not in _NUMPY:
        raise _bad(f"input '{key}' has dtype {types_pb2.DataType.Name(dtype)}, which the "
                   "local REST API does not take; use gRPC")
    try:
        array = np.array(value, dtype=_NUMPY[dtype])
    except (TypeError, ValueError) as e:
        raise _bad(f"input '{key}' is not a {types_pb2.DataType.Name(dtype)} tensor: {e}") \
            from None
    return protocol.as_proto_field(array)


def predict_inputs(body: dict, sig) -> Dict[str, object]:
    """The `instances` (row) or `inputs` (columnar) of a :predict body, as TensorProtos."""
    names = sorted(sig.inputs)
    # The messages are json_tensor.cc's (FillPredictRequestFromJson).
    if "instances" not in body and "inputs" not in body:
        raise _bad("Missing 'inputs' or 'instances' key")
    if "instances" in body and "inputs" in body:
        raise _bad("Not formatted correctly expecting only one of 'inputs' or 'instances' "
                   "keys to exist")
    if "instances" in body:
        rows = _decode(body["instances"])
        if not isinstance(rows, list):
            raise _bad("Expecting 'instances' to be an list/array")
        if not rows:
            raise _bad("No values in 'instances' array")
        named = all(isinstance(r, dict) for r in rows)
        if named:
            columns = {}
            for key in {k for r in rows for k in r}:
                if any(key not in r for r in rows):
                    raise _bad(f"input '{key}' is missing from some instances; every instance "
                               "must name the same inputs")
                columns[key] = [r[key] for r in rows]
        elif len(names) == 1:
            columns = {names[0]: rows}
        else:
            raise _bad(f"instances must be objects naming the inputs {names}")
    else:
        value = _decode(body["inputs"])
        if isinstance(value, dict):
            columns = value
        elif len(names) == 1:
            columns = {names[0]: value}
        else:
            raise _bad(f"'inputs' must be an object naming the inputs {names}")
    tensors = {}
    for key, value in columns.items():
        info = sig.inputs.get(key)
        # Unknown keys pass through as strings: check_inputs names them with the rest.
        tensors[key] = _tensor(key, value, info.dtype if info else types_pb2.DT_STRING)
    return tensors


def _feature(name: str, value) -> feature_pb2.Feature:
    values = value if isinstance(value, list) else [value]
    if all(isinstance(v, (bytes, str)) for v in values):
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(
            value=[v.encode() if isinstance(v, str) else v for v in values]))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=values))
    raise _bad(f"feature '{name}' must hold strings, integers or numbers, not a mix")


def _example(features) -> example_pb2.Example:
    if not isinstance(features, dict):
        raise _bad("each example must be an object of feature name -> value(s)")
    return example_pb2.Example(features=feature_pb2.Features(
        feature={k: _feature(k, v) for k, v in features.items()}))


# --------------------------------------------------------------------------
# tensors -> JSON
def _json_value(key: str, array: np.ndarray):
    if array.dtype == object or array.dtype.kind == "S":
        if key.endswith(BYTES_SUFFIX):
            encode = lambda b: {B64: base64.b64encode(b).decode()}  # noqa: E731
        else:
            encode = lambda b: b.decode("utf-8", "replace")  # noqa: E731
        return np.vectorize(encode, otypes=[object])(array).tolist() if array.size else []
    return array.tolist()


def predict_json(outputs: Dict[str, np.ndarray], row_format: bool) -> dict:
    """json_tensor.cc MakeJsonFromTensors: one output -> its value, several -> by name."""
    if not row_format:
        values = {k: _json_value(k, v) for k, v in outputs.items()}
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    batch = {v.shape[0] if v.ndim else None for v in outputs.values()}
    if len(batch) != 1 or None in batch:
        raise _bad("outputs have inconsistent batch sizes (or none); ask for the "
                   "columnar format ('inputs') instead of 'instances'")
    columns = {k: _json_value(k, v) for k, v in outputs.items()}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [{k: columns[k][i] for k in columns} for i in range(batch.pop())]}


def _proto_json(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     including_default_value_fields=True)


# --------------------------------------------------------------------------
class RestApi:
    """The REST routes over the gRPC servicers: handle(method, path, body) -> (status, dict)."""

    def __init__(self, prediction, models):
        # The server's PredictionService and ModelService servicers (serving/server.py).
        self.prediction, self.models = prediction, models

    @staticmethod
    def _spec(target, name, version, label):
        target.name = name
        if version is not None:
            target.version.value = int(version)
        elif label is not None:
            target.version_label = label

    def handle(self, method: str, path: str, body: bytes):
        try:
            return 200, self._route(method, path.split("?")[0], body)
        except protocol.RequestError as e:
            return HTTP_STATUS.get(e.code, 500), {"error": e.message}

    def _route(self, method, path, body):
        m = _INFER.fullmatch(path)
        if method == "POST" and m:
            request = self._body(body)
            verb = m.group(4).lower()
            if verb == "predict":
                return self.predict(m.group(1, 2, 3), request)
            if verb == "classify":
                return self.classify(m.group(1, 2, 3), request)
            regress = regression_pb2.RegressionRequest()
            self._spec(regress.model_spec, *m.group(1, 2, 3))
            return self.prediction.Regress(regress, _Context())
        m = _STATUS.fullmatch(path)
        if method == "GET" and m:
            if m.group(4):
                return self.metadata(m.group(1, 2, 3))
            request = get_model_status_pb2.GetModelStatusRequest()
            self._spec(request.model_spec, *m.group(1, 2, 3))
            return _proto_json(self.models.GetModelStatus(request, _Context()))
        # http_rest_api_handler.cc: any other request is InvalidArgument.
        raise _bad(f"Malformed request: {method} {path}")

    @staticmethod
    def _body(body: bytes) -> dict:
        try:
            parsed = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise _bad(f"JSON Parse error: {e}") from None
        if not isinstance(parsed, dict):
            raise _bad("the request body must be a JSON object")
        return parsed

    def predict(self, spec, body):
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, *spec)
        request.model_spec.signature_name = str(body.get("signature_name", ""))
        # The signature's dtypes say how to read JSON numbers and strings.
        loaded = self.prediction.manager.resolve(request.model_spec)
        name, sig = protocol.signature_of(loaded, request.model_spec.signature_name)
        request.model_spec.version.value = loaded.version  # the version whose dtypes were read
        for key, proto in predict_inputs(body, sig).items():
            request.inputs[key].CopyFrom(proto)
        response = self.prediction.Predict(request, _Context())
        outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
        return predict_json(outputs, row_format="instances" in body)

    def classify(self, spec, body):
        request = classification_pb2.ClassificationRequest()
        self._spec(request.model_spec, *spec)
        request.model_spec.signature_name = str(body.get("signature_name", ""))
        examples = _decode(body.get("examples"))
        if not isinstance(examples, list):
            raise _bad("a :classify request needs 'examples': a list of objects of features")
        if "context" in body:
            listed = request.input.example_list_with_context
            listed.context.CopyFrom(_example(_decode(body["context"])))
        else:
            listed = request.input.example_list
        for features in examples:
            listed.examples.append(_example(features))
        response = self.prediction.Classify(request, _Context())
        return {"results": [[[c.label, c.score] for c in r.classes]
                            for r in response.result.classifications]}

    def metadata(self, spec):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, *spec)
        response = self.prediction.GetModelMetadata(request, _Context())
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        # As TF Serving writes it: the SignatureDefMap's JSON under "signature_def",
        # hence signature_def.signature_def.
        return {"model_spec": _proto_json(response.model_spec),
                "metadata": {"signature_def": _proto_json(sig_map)}}


class RestServer:
    """The REST API on a thread of its own: start(), stop(), address."""

    def __init__(self, prediction, models, host: str, port: int, max_payload_bytes: int):
        api = RestApi(prediction, models)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving's HTTP server
            # Headers and body are two writes: with Nagle on, the body waits for the
            # client's delayed ACK (40 ms on Linux) on every keep-alive request.
            disable_nagle_algorithm = True

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length > max_payload_bytes:
                    self.close_connection = True
                    status, out = HTTP_STATUS[grpc.StatusCode.RESOURCE_EXHAUSTED], {
                        "error": f"request body of {length} bytes is larger than max "
                                 f"({max_payload_bytes} bytes)"}
                else:
                    status, out = api.handle(self.command, self.path, self.rfile.read(length))
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, fmt, *args):
                log.debug("%s " + fmt, self.address_string(), *args)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self._httpd = Server((host, port), Handler)
        self.port = self._httpd.server_address[1]
        self.address = f"{host}:{self.port}"
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "RestServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rest",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
