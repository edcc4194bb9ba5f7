"""Compatibility with TF Serving, behaviour by behaviour, over gRPC and REST.

Each test states what TF Serving does and where its source (github.com/
tensorflow/serving, tensorflow_serving/...) or docs say so, and checks that the
local server does the same on the stand-in model of test_serving.py.
"""
import base64
import http.client as httplib
import json
import socket
import threading
import time

import grpc
import numpy as np
import pytest

from tfx_transfer.modules import keras_compat  # noqa: F401
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from tfx_transfer.serving import rest, signatures as sigs
from tfx_transfer.serving.client import RetryPolicy, ServingClient
from tfx_transfer.serving.rest_client import RestClient
from tfx_transfer.serving.server import ModelServer, as_proto_field
from test_serving import (BLUE, CLASSES, GREEN, MAX_BATCH, MAX_PAYLOAD, MAX_PIXELS, RED,  # noqa: F401
                          models, png, push, send, serve_two_versions, _tensor)

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    srv = serve_two_versions(models, str(tmp_path_factory.mktemp("compat") / "colors"),
                             rest_api_port=0)
    yield srv
    srv.stop()


def http(address, method, path, body=None, raw=None):
    host, port = address.rsplit(":", 1)
    conn = httplib.HTTPConnection(host, int(port), timeout=30)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        conn.request(method, path, body=data)
        response = conn.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def b64(data):
    return {"b64": base64.b64encode(data).decode()}


def port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---------------------------------------------------------------------------
def test_ports_open_only_after_the_initial_load(models, tmp_path):
    """TF Serving: model_servers/server.cc Server::BuildAndStart creates ServerCore,
    which waits until the initial versions are loaded, and only then builds and
    starts the gRPC server and the HTTP/REST server. So a client that connects as
    soon as the port is open succeeds on its first call."""
    import portpicker

    base = str(tmp_path / "colors")
    grpc_port, rest_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
    srv = ModelServer(base, "colors", port=grpc_port, rest_api_port=rest_port,
                      poll_interval_s=0.05).start()
    try:
        time.sleep(0.3)
        assert not port_open(grpc_port) and not port_open(rest_port)
        threading.Timer(0.2, push, (models[0], base, 1)).start()
        deadline = time.monotonic() + 60
        while not port_open(grpc_port):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        no_retry = RetryPolicy(max_attempts=1)
        with ServingClient(f"127.0.0.1:{grpc_port}", "colors", retry=no_retry) as c:
            assert c.predict([png(RED)])[0].top_k[0].class_name == "red"
        with RestClient(f"http://127.0.0.1:{rest_port}", "colors", retry=no_retry) as c:
            assert c.predict([png(BLUE)])[0].top_k[0].class_name == "blue"
    finally:
        srv.stop()


def test_grpc_outputs_are_in_the_typed_fields_not_tensor_content(server):
    """TF Serving: servables/tensorflow/predict_util.cc PostProcessPredictionResult,
    under the model server's default kAsProtoField, calls Tensor::AsProtoField:
    float_val / int64_val / string_val hold the values, tensor_content is empty."""
    response = send(server.address, "colors", "serving_images", 1,
                    {"images": _tensor([png(RED), png(GREEN)])})
    probs, ids, names = (response.outputs[k] for k in
                         ("probabilities", "class_ids", "class_names"))
    assert all(t.tensor_content == b"" for t in (probs, ids, names))
    assert (probs.dtype, [d.size for d in probs.tensor_shape.dim]) == (types_pb2.DT_FLOAT, [2, 3])
    assert len(probs.float_val) == 6 and abs(sum(probs.float_val[:3]) - 1) < 1e-5
    assert ids.dtype == types_pb2.DT_INT64 and list(ids.int64_val) == [0, 1]
    assert names.dtype == types_pb2.DT_STRING and list(names.string_val) == [b"red", b"green"]


@pytest.mark.parametrize("value", [
    np.array([[0.25, 1.5]], np.float32), np.array([1.0, 2.0], np.float64),
    np.array([3, -4], np.int32), np.array([[2 ** 40]], np.int64), np.array([7], np.uint8),
    np.array([True, False]), np.array([b"a", b"\xff"], dtype=object),
    np.array([1.5], np.float16), np.zeros((0, 3), np.float32), np.array(2.5, np.float32)],
    ids=lambda v: f"{v.dtype}{list(v.shape)}")
def test_every_output_dtype_is_encoded_as_proto_field(value):
    """Tensor::AsProtoField (tensorflow/core/framework/tensor.cc): the dtype's
    repeated field, half_val as the bits; decoded by tf.make_ndarray unchanged."""
    proto = as_proto_field(value)
    assert proto.tensor_content == b""
    assert [d.size for d in proto.tensor_shape.dim] == list(value.shape)
    back = tf.make_ndarray(proto)
    assert back.shape == value.shape and back.tolist() == value.tolist()


# ---------------------------------------------------------------------------
def test_rest_model_status(server):
    """docs/api_rest.md "Model status API" and http_rest_api_handler_test.cc: the
    GetModelStatusResponse as JSON, int64 versions as strings, enums by name."""
    status, out = http(server.rest_address, "GET", "/v1/models/colors")
    assert status == 200 and out == {"model_version_status": [
        {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK",
                                                             "error_message": ""}}
        for v in (2, 1)]}
    for path in ("/v1/models/colors/versions/1", "/v1/models/colors/labels/stable"):
        status, out = http(server.rest_address, "GET", path)
        assert status == 200 and [s["version"] for s in out["model_version_status"]] == ["1"]


def test_rest_model_metadata(server):
    """model_servers/http_rest_api_util.cc ToJsonString(GetModelMetadataResponse):
    {"model_spec": ..., "metadata": {"signature_def": <SignatureDefMap JSON>}},
    hence metadata.signature_def.signature_def, with proto field names."""
    status, out = http(server.rest_address, "GET", "/v1/models/colors/versions/1/metadata")
    assert status == 200
    assert out["model_spec"] == {"name": "colors", "signature_name": "", "version": "1"}
    defs = out["metadata"]["signature_def"]["signature_def"]
    assert set(defs) == {"classification", "serving_default", "serving_images"}
    images = defs["serving_images"]["inputs"]["images"]
    assert images["dtype"] == "DT_STRING" and images["tensor_shape"]["dim"][0]["size"] == "-1"
    assert defs["serving_images"]["method_name"] == "tensorflow/serving/predict"


def test_rest_predict_row_and_columnar_formats(server):
    """docs/api_rest.md "Predict API" and util/json_tensor.cc: `instances` (row
    format) answers {"predictions": [...]}, one object per instance when there are
    several outputs; `inputs` (columnar) answers {"outputs": {...}}; bytes travel
    as {"b64": ...}; an instance may name its input or, with one input, be the value."""
    images = [png(RED), png(GREEN), png(BLUE)]
    grpc_out = send(server.address, "colors", "serving_images", None,
                    {"images": _tensor(images)})
    expected = tf.make_ndarray(grpc_out.outputs["probabilities"])
    path = "/v1/models/colors:predict"
    for instances in ([b64(i) for i in images], [{"images": b64(i)} for i in images]):
        status, out = http(server.rest_address, "POST", path,
                           {"signature_name": "serving_images", "instances": instances})
        assert status == 200 and len(out["predictions"]) == 3
        np.testing.assert_allclose([p["probabilities"] for p in out["predictions"]], expected,
                                   rtol=1e-6)
        assert [p["class_names"] for p in out["predictions"]] == ["green", "blue", "red"]
        assert [p["class_ids"] for p in out["predictions"]] == [1, 2, 0]
    status, out = http(server.rest_address, "POST", path, {
        "signature_name": "serving_images", "inputs": {"images": [b64(i) for i in images]}})
    assert status == 200 and set(out) == {"outputs"}
    np.testing.assert_allclose(out["outputs"]["probabilities"], expected, rtol=1e-6)
    # serving_default (the default signature) takes tf.Examples; version 1 does not rotate.
    status, out = http(server.rest_address, "POST", "/v1/models/colors/versions/1:predict",
                       {"instances": [b64(sigs.image_example(png(RED)))]})
    assert status == 200 and out["predictions"][0]["class_names"] == "red"


def test_rest_outputs_named_bytes_are_base64():
    """util/json_tensor.cc: a string output whose name ends in `_bytes` is written
    as {"b64": ...}; other strings as JSON strings. One output: its value alone."""
    out = rest.predict_json({"image_bytes": np.array([b"\xff\x00"], dtype=object),
                             "name": np.array([b"cat"], dtype=object)}, row_format=True)
    assert out == {"predictions": [{"image_bytes": {"b64": "/wA="}, "name": "cat"}]}
    assert rest.predict_json({"p": np.array([[0.5]], np.float32)}, row_format=True) == \
        {"predictions": [[0.5]]}
    assert rest.predict_json({"p": np.array([[0.5]], np.float32)}, row_format=False) == \
        {"outputs": [[0.5]]}


def test_rest_classify(server):
    """docs/api_rest.md "Classify and Regress API": {"examples": [...], "context":
    {...}} answers {"results": [[[label, score], ...], ...]}."""
    status, out = http(server.rest_address, "POST", "/v1/models/colors/labels/stable:classify", {
        "signature_name": "classification",
        "examples": [{"image": b64(png(BLUE))}, {"image": b64(png(RED))}]})
    assert status == 200 and len(out["results"]) == 2
    assert [[label for label, _ in r] for r in out["results"]] == [list(CLASSES)] * 2
    assert [max(r, key=lambda c: c[1])[0] for r in out["results"]] == ["blue", "red"]
    status, out = http(server.rest_address, "POST", "/v1/models/colors/versions/1:classify", {
        "signature_name": "classification", "context": {"image": b64(png(GREEN))},
        "examples": [{}]})
    assert status == 200 and max(out["results"][0], key=lambda c: c[1])[0] == "green"


# ---------------------------------------------------------------------------
# Errors: the same status over both APIs, the REST one mapped by
# model_servers/http_server.cc ToHTTPStatusCode, the body {"error": "..."}
# (util/json_tensor.cc MakeJsonFromStatus).
def error_cases():
    """(what, model, version, label, signature, images, gRPC code, text, TF Serving's source)."""
    ok = png(RED)
    bomb = png((0, 0, 0), size=(2000, 1000))
    return [
        ("unknown model", "nope", None, None, "serving_images", [ok], Code.NOT_FOUND,
         "model 'nope' is not served here", "core/basic_manager.cc: Servable not found"),
        ("unknown version", "colors", 9, None, "serving_images", [ok], Code.NOT_FOUND,
         "version 9 of model 'colors' is not loaded", "core/basic_manager.cc"),
        ("unknown label", "colors", None, "canary", "serving_images", [ok],
         Code.INVALID_ARGUMENT, "Unrecognized servable version label: canary",
         "model_servers/server_core.cc GetModelVersionForLabel"),
        ("unknown signature", "colors", None, None, "nope", [ok], Code.FAILED_PRECONDITION,
         'Serving signature key "nope" not found', "servables/tensorflow/predict_util.cc"),
        ("not an image", "colors", None, None, "serving_images", [ok, b"text"],
         Code.INVALID_ARGUMENT, "images[1]: not a JPEG, PNG, GIF or BMP image",
         "decode errors are InvalidArgument"),
        ("batch over limit", "colors", None, None, "serving_images", [ok] * (MAX_BATCH + 1),
         Code.RESOURCE_EXHAUSTED, f"over this server's limit of {MAX_BATCH}",
         "batching/ max_batch_size: ResourceExhausted"),
        ("image over pixel limit", "colors", None, None, "serving_images", [bomb],
         Code.RESOURCE_EXHAUSTED, f"over the limit of {MAX_PIXELS} pixels", "(local limit)"),
        ("payload over limit", "colors", None, None, "serving_images", [b"x" * MAX_PAYLOAD],
         Code.RESOURCE_EXHAUSTED, "larger than max", "gRPC max_receive_message_length"),
    ]


@pytest.mark.parametrize("case", error_cases(), ids=lambda c: c[0])
def test_each_error_has_the_same_status_over_grpc_and_rest(server, case):
    what, model, version, label, signature, images, code, text, _ = case
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model, signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["images"].CopyFrom(_tensor(images))
    with grpc.insecure_channel(server.address, options=[
            ("grpc.max_send_message_length", -1)]) as channel:
        with pytest.raises(grpc.RpcError) as e:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert e.value.code() == code and text in e.value.details(), e.value.details()

    path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "") + \
        (f"/labels/{label}" if label else "") + ":predict"
    status, out = http(server.rest_address, "POST", path,
                       {"signature_name": signature, "instances": [b64(i) for i in images]})
    assert status == rest.HTTP_STATUS[code] and set(out) == {"error"}
    assert text in out["error"], out


def test_classify_and_regress_errors_match_over_grpc_and_rest(server):
    """servables/tensorflow/classifier.cc PreProcessClassification and
    regressor.cc: a signature not shaped for the API is InvalidArgument."""
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "colors", "serving_default"
    request.input.example_list.examples.add()
    with grpc.insecure_channel(server.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.Classify(request, timeout=30)
        assert e.value.code() == Code.INVALID_ARGUMENT
        assert "Expected one or two output Tensors, found 3" in e.value.details()
        regress = regression_pb2.RegressionRequest()
        regress.model_spec.name = "colors"
        with pytest.raises(grpc.RpcError) as r:
            stub.Regress(regress, timeout=30)
        assert r.value.code() == Code.INVALID_ARGUMENT
    status, out = http(server.rest_address, "POST", "/v1/models/colors:classify",
                       {"signature_name": "serving_default", "examples": [{}]})
    assert status == 400 and "Expected one or two output Tensors, found 3" in out["error"]
    status, out = http(server.rest_address, "POST", "/v1/models/colors:regress",
                       {"examples": [{}]})
    assert status == 400 and "no regression signature" in out["error"]


@pytest.mark.parametrize("method, path, raw, status, text", [
    ("GET", "/v1/models/colors:predict", b"", 400, "Malformed request: GET /v1/models/colors"),
    ("POST", "/v1/models/colors", b"{}", 400, "Malformed request: POST /v1/models/colors"),
    ("POST", "/v2/whatever", b"{}", 400, "Malformed request"),
    ("POST", "/v1/models/colors:predict", b"{not json", 400, "JSON Parse error"),
    ("POST", "/v1/models/colors:predict", b"{}", 400, "Missing 'inputs' or 'instances' key"),
    ("POST", "/v1/models/colors:predict", b'{"instances": [], "inputs": []}', 400,
     "expecting only one of 'inputs' or 'instances'"),
    ("POST", "/v1/models/colors:predict", b'{"instances": []}', 400,
     "No values in 'instances' array"),
    ("POST", "/v1/models/colors:predict",
     b'{"signature_name": "serving_images", "instances": [{"b64": "!!"}]}', 400,
     "not valid base64"),
    ("POST", "/v1/models/colors:predict",
     json.dumps({"instances": ["x" * (MAX_PAYLOAD + 1)]}).encode(), 429, "larger than max"),
    ("GET", "/v1/models/nope", b"", 404, "model 'nope' is not served here"),
])
def test_rest_request_errors(server, method, path, raw, status, text):
    """model_servers/http_rest_api_handler.cc: any request that matches no route
    is InvalidArgument "Malformed request: METHOD PATH" (400); JSON errors come
    from util/json_tensor.cc FillPredictRequestFromJson, also 400."""
    got, out = http(server.rest_address, method, path, raw=raw)
    assert got == status and set(out) == {"error"} and text in out["error"], out
    # The server keeps serving.
    assert http(server.rest_address, "GET", "/v1/models/colors")[0] == 200


def test_cli_predict_over_rest(server, tmp_path, capsys):
    from tfx_transfer.pipeline import cli

    image = tmp_path / "b.jpg"
    image.write_bytes(png(BLUE, fmt="JPEG"))
    url = f"http://{server.rest_address}"
    args = ["predict", "--rest", url, "--model", "colors", "--version", "1", "--top-k", "3",
            "--json", str(image)]
    assert cli.main(args) == 0
    (out,) = json.loads(capsys.readouterr().out)
    assert out["model_version"] == 1 and out["top_k"][0]["class_name"] == "blue"
    # The same probabilities as over gRPC.
    with ServingClient(server.address, "colors", version=1) as c:
        expected = c.predict([str(image)])[0].probabilities
    assert [c["probability"] for c in out["top_k"]] == pytest.approx(
        sorted(expected.tolist(), reverse=True), rel=1e-6)
    assert cli.main(["predict", "--rest", url, "--model", "nope", str(image)]) == 1
    assert "NOT_FOUND: HTTP 404: model 'nope' is not served here" in capsys.readouterr().err
