"""Round trip over real gRPC on localhost: the model the pipeline pushed ->
local server -> client, against calling the same SavedModel in-process."""
import glob
import io
import os

import grpc
import numpy as np
import pytest
from PIL import Image

from tfx_transfer.modules import keras_compat  # noqa: F401
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfx_transfer.serving import signatures as sigs
from tfx_transfer.serving.client import ServingClient
from tfx_transfer.serving.server import ModelServer

pytestmark = pytest.mark.e2e
SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "data", "cifar10-sample", "test")
MAX_BATCH, MAX_PAYLOAD = 16, 1 << 20


@pytest.fixture(scope="module")
def served(tiny_run):
    config, summary = tiny_run
    pushed = summary["pushed_model_dir"]
    assert pushed, "the tiny run pushed no model"
    base = os.path.join(config.deploy.resolved_serving_dir, config.deploy.model_name)
    srv = ModelServer(base, config.deploy.model_name, max_batch_size=MAX_BATCH,
                      max_payload_bytes=MAX_PAYLOAD, rest_api_port=0).start()
    assert srv.wait_until_available(300)
    yield srv, pushed, config.deploy.model_name
    srv.stop()


@pytest.fixture(scope="module")
def in_process(served):
    """The pushed SavedModel loaded here, independently of the server's copy."""
    return tf.saved_model.load(served[1])


def jpegs():
    """The first test image of every class."""
    files = [sorted(glob.glob(os.path.join(d, "*.jpg")))[0]
             for d in sorted(glob.glob(os.path.join(SAMPLE, "*")))]
    assert len(files) == 10
    return [open(f, "rb").read() for f in files]


def as_png(jpeg):
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("signature", ["serving_images", "serving_default"])
@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_served_probabilities_equal_in_process(served, in_process, signature, fmt):
    srv, pushed, name = served
    images = jpegs() if fmt == "jpeg" else [as_png(j) for j in jpegs()]
    magic = b"\xff\xd8\xff" if fmt == "jpeg" else b"\x89PNG"
    assert all(i.startswith(magic) for i in images)
    fn = in_process.signatures[signature]
    key, kind = sigs.SIGNATURE_INPUTS[signature]
    payload = images if kind == sigs.IMAGES else [sigs.image_example(i) for i in images]
    local = fn(**{key: tf.constant(payload)})

    with ServingClient(srv.address, name, signature_name=signature) as client:
        preds = client.predict(images, top_k=3, batch_size=4)
    assert all(p.model_version == int(os.path.basename(pushed)) for p in preds)
    np.testing.assert_allclose(np.stack([p.probabilities for p in preds]),
                               local["probabilities"].numpy(), rtol=1e-5, atol=1e-6)
    assert [p.top_k[0].class_name.encode() for p in preds] == local["class_names"].numpy().tolist()
    # Every top-k class is named, from the model's `classes` output (no vocabulary file given).
    vocab = [n.decode() for n in local["classes"].numpy()[0]]
    assert len(vocab) == 10 and len(set(vocab)) == 10
    for p, row in zip(preds, local["probabilities"].numpy()):
        assert [c.class_name for c in p.top_k] == [vocab[i] for i in np.argsort(-row, kind="stable")[:3]]


def test_metadata_status_and_classify_of_the_pushed_model(served):
    srv, pushed, name = served
    with ServingClient(srv.address, name) as client:
        meta = client.metadata()
        assert {"serving_default", "serving_images", "transform_features", "embeddings"} <= set(meta)
        assert meta["serving_images"]["inputs"] == {"images": ("DT_STRING", [-1])}
        status = client.status()
        assert status[0]["version"] == int(os.path.basename(pushed))
        assert status[0]["state"] == "AVAILABLE"
        images = jpegs()[:3]
        classified = client.classify(images)
        preds = client.predict(images)
    with open(os.path.join(pushed, "assets", sigs.LABELS_ASSET)) as f:
        vocabulary = [l.strip() for l in f if l.strip()]
    for classes, p in zip(classified, preds):
        assert [label for label, _ in classes] == vocabulary
        np.testing.assert_allclose([s for _, s in classes], p.probabilities, rtol=1e-5, atol=1e-6)
        assert vocabulary[int(np.argmax(p.probabilities))] == p.top_k[0].class_name


def _request(name, signature, inputs, version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = name, signature
    if version is not None:
        request.model_spec.version.value = version
    for key, (dtype, values) in inputs.items():
        t = request.inputs[key]
        t.dtype = dtype
        t.tensor_shape.dim.add(size=len(values))
        (t.string_val if dtype == types_pb2.DT_STRING else t.float_val).extend(values)
    return request


def test_burst_of_bad_requests_leaves_the_server_serving(served):
    srv, pushed, name = served
    jpeg = jpegs()[0]
    s = types_pb2.DT_STRING
    bad = [
        (_request(name, "serving_images", {"image": (s, [jpeg])}), grpc.StatusCode.INVALID_ARGUMENT,
         "missing input(s) ['images']"),
        (_request(name, "serving_images", {"images": (types_pb2.DT_FLOAT, [0.5])}),
         grpc.StatusCode.INVALID_ARGUMENT, "expects DT_STRING"),
        (_request(name, "serving_images", {"images": (s, [b"GIF89a-but-not-really"])}),
         grpc.StatusCode.INVALID_ARGUMENT, "images[0]: not a JPEG, PNG, GIF or BMP image"),
        (_request(name, "serving_default", {"examples": (s, [jpeg])}),
         grpc.StatusCode.INVALID_ARGUMENT, "examples[0]"),
        (_request(name, "serving_images", {"images": (s, [])}),
         grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
        (_request(name, "serving_images", {"images": (s, [jpeg] * (MAX_BATCH + 1))}),
         grpc.StatusCode.RESOURCE_EXHAUSTED, f"over this server's limit of {MAX_BATCH}"),
        (_request(name, "serving_images", {"images": (s, [b"\xff" * MAX_PAYLOAD])}),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
        (_request("other", "serving_images", {"images": (s, [jpeg])}),
         grpc.StatusCode.NOT_FOUND, "model 'other' is not served here"),
        (_request(name, "predict", {"images": (s, [jpeg])}),
         grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "predict" not found'),
        (_request(name, "serving_images", {"images": (s, [jpeg])}, version=1),
         grpc.StatusCode.NOT_FOUND, "version 1 of model"),
    ]
    with grpc.insecure_channel(srv.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        calls = [stub.Predict.future(request, timeout=60) for request, _, _ in bad * 3]
        for call, (_, code, text) in zip(calls, bad * 3):
            with pytest.raises(grpc.RpcError) as e:
                call.result()
            assert e.value.code() == code and text in e.value.details(), e.value.details()
        good = stub.Predict(_request(name, "serving_images", {"images": (s, [jpeg, as_png(jpeg)])}),
                            timeout=60)
    probs = tf.make_ndarray(good.outputs["probabilities"])
    assert probs.shape[0] == 2 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_pushed_model_carries_a_warmup_file_every_signature_can_run(served, in_process):
    """TF Serving replays assets.extra/tf_serving_warmup_requests at load
    (servables/tensorflow/saved_model_warmup.cc) and fails the load when a record
    fails, so every record must run on the pushed model itself."""
    from tfx_transfer.modules.warmup import WARMUP_BATCH_SIZES
    from tfx_transfer.serving import warmup

    _, pushed, _ = served
    logs = warmup.read(pushed)
    by_signature = {}
    for log in logs:
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        by_signature.setdefault(request.model_spec.signature_name, []).append(request)
    assert set(by_signature) == {"classification", "serving_default", "serving_images",
                                 "transform_features", "embeddings"}
    for signature, requests in by_signature.items():
        assert [len(next(iter(r.inputs.values())).string_val) for r in requests] == \
            list(WARMUP_BATCH_SIZES)
        fn = in_process.signatures[signature]
        for request in requests:
            (key, proto), = request.inputs.items()
            out = fn(**{key: tf.constant(list(proto.string_val))})
            assert all(v.shape[0] == len(proto.string_val) for v in out.values())
    jpeg = by_signature["serving_images"][0].inputs["images"].string_val[0]
    assert jpeg.startswith(b"\xff\xd8\xff")


def test_rest_api_predicts_cifar_names(served, in_process):
    """What `curl -d '{"instances": [{"b64": ...}]}' .../v1/models/NAME:predict` gets."""
    import base64
    import json
    import urllib.request

    srv, pushed, name = served
    images = jpegs()
    body = {"signature_name": "serving_images",
            "instances": [{"b64": base64.b64encode(i).decode()} for i in images]}
    request = urllib.request.Request(f"http://{srv.rest_address}/v1/models/{name}:predict",
                                     data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        predictions = json.loads(response.read())["predictions"]
    local = in_process.signatures["serving_images"](images=tf.constant(images))
    assert [p["class_names"] for p in predictions] == \
        [n.decode() for n in local["class_names"].numpy()]
    np.testing.assert_allclose([p["probabilities"] for p in predictions],
                               local["probabilities"].numpy(), rtol=1e-5, atol=1e-6)
    cifar = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"}
    assert set(predictions[0]["classes"]) == cifar
