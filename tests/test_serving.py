"""Client, local server and CLI over real gRPC on localhost, on a small stand-in
SavedModel with the exported classifier's signatures (the pipeline-pushed
model is exercised in test_serving_e2e.py)."""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from tfx_transfer.modules import keras_compat  # noqa: F401
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfx_transfer.pipeline import cli
from tfx_transfer.pipeline.cli import serving as serving_cli
from tfx_transfer.serving import signatures as sigs
from tfx_transfer.serving.client import RetryPolicy, ServingClient, ServingError, encode_image
from tfx_transfer.serving.signatures import string_tensor
from tfx_transfer.serving.server import ModelServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("red", "green", "blue")
RED, GREEN, BLUE = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
MAX_BATCH, MAX_PAYLOAD, MAX_PIXELS = 4, 256 << 10, 1_000_000
Code = grpc.StatusCode


def build_standin(path, shift=0):
    """A SavedModel with the contract's signatures: the mean colour of the image
    picks the class; `shift` rotates the classes, so versions answer differently."""
    weights = tf.constant(np.roll(np.eye(3) * 10.0, shift, axis=1), tf.float32)
    names = tf.constant(CLASSES)

    def pixels(encoded):
        def one(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            return tf.reduce_mean(tf.cast(image, tf.float32), axis=[0, 1]) / 255.0
        return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([3], tf.float32))

    def outputs(x):
        probs = tf.nn.softmax(x @ weights)
        ids = tf.argmax(probs, axis=-1)
        return {"probabilities": probs, "class_ids": ids, "class_names": tf.gather(names, ids)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(images):
        return outputs(pixels(images))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        parsed = tf.io.parse_example(examples, {"image": tf.io.FixedLenFeature([], tf.string)})
        return outputs(pixels(parsed["image"]))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(inputs):
        out = serve_examples(inputs)
        return {"classes": tf.tile(names[tf.newaxis], [tf.shape(inputs)[0], 1]),
                "scores": out["probabilities"]}

    tf.saved_model.save(tf.Module(), path, signatures={
        "classification": classify.get_concrete_function(),
        "serving_default": serve_examples.get_concrete_function(),
        "serving_images": serve_images.get_concrete_function()})
    os.makedirs(os.path.join(path, "assets"), exist_ok=True)
    with open(os.path.join(path, "assets", sigs.LABELS_ASSET), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    return path


def push(model_dir, base, version):
    """Copies like the TFX Pusher: saved_model.pb last."""
    target = os.path.join(base, str(version))
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns("saved_model.pb"))
    shutil.copy(os.path.join(model_dir, "saved_model.pb"), target)
    return target


def png(color, size=(16, 16), fmt="PNG"):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("standin")
    return {shift: build_standin(str(root / f"shift{shift}"), shift) for shift in (0, 1)}


def serve_two_versions(models, base, **options):
    """Versions 1 and 2 (rotated) of the stand-in, label stable=1, both loaded."""
    push(models[0], base, 1)
    push(models[1], base, 2)
    srv = ModelServer(base, "colors", max_batch_size=MAX_BATCH, max_payload_bytes=MAX_PAYLOAD,
                      max_image_pixels=MAX_PIXELS, num_versions=2, version_labels={"stable": 1},
                      poll_interval_s=0.2, **options)
    srv.start()
    assert srv.wait_until_available(60)
    while len(srv.manager.loaded()) < 2:
        time.sleep(0.1)
    return srv


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    srv = serve_two_versions(models, str(tmp_path_factory.mktemp("serving") / "colors"))
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with ServingClient(server.address, "colors", timeout_s=10) as c:
        yield c


def in_process(model_dir, images):
    fn = tf.saved_model.load(model_dir).signatures["serving_images"]
    return fn(images=tf.constant(images))["probabilities"].numpy()


# ---------------------------------------------------------------------------
def test_predict_from_paths_bytes_and_arrays(client, models, tmp_path):
    jpeg_path = tmp_path / "blue.jpg"
    jpeg_path.write_bytes(png(BLUE, fmt="JPEG"))
    red_array = np.zeros((12, 10, 3), np.uint8)
    red_array[..., 0] = 255
    preds = client.predict([str(jpeg_path), png(GREEN), red_array, png(RED)], top_k=3,
                           batch_size=3)
    # The newest version (2) answers by default; it rotates the classes by one.
    assert all(p.model_version == 2 for p in preds)
    assert [p.top_k[0].class_name for p in preds] == ["red", "blue", "green", "green"]
    assert preds[0].source == str(jpeg_path) and preds[2].source == "<array 12x10x3>"
    # shift=1 is version 2; the served probabilities are the SavedModel's own.
    expected = in_process(models[1], [encode_image(x)[1] for x in
                                      (str(jpeg_path), png(GREEN), red_array, png(RED))])
    np.testing.assert_allclose(np.stack([p.probabilities for p in preds]), expected, rtol=1e-6)
    top = preds[1].top_k
    assert [c.probability for c in top] == sorted((c.probability for c in top), reverse=True)
    assert sum(c.probability for c in top) == pytest.approx(1.0, abs=1e-5)


def test_tf_example_signature_matches_images_signature(client):
    images = [png(RED), png(GREEN, fmt="JPEG"), png((10, 200, 90))]
    a = client.predict(images, signature_name="serving_images")
    b = client.predict(images, signature_name="serving_default")
    np.testing.assert_allclose([p.probabilities for p in a], [p.probabilities for p in b],
                               rtol=1e-6)


def test_batches_are_split_to_the_requested_size(server):
    images = [png(c) for c in (RED, GREEN, BLUE, RED, GREEN)]
    with ServingClient(server.address, "colors", version=1) as client:
        # Five images in requests of 2 stay under the server's limit of 4 ...
        assert [p.top_k[0].class_name for p in client.predict(images, batch_size=2)] == \
            ["red", "green", "blue", "red", "green"]
        # ... and one request of five does not.
        with pytest.raises(ServingError) as e:
            client.predict(images, batch_size=5)
    assert e.value.code == Code.RESOURCE_EXHAUSTED and "limit of 4" in e.value.details


def test_top_k_names_come_from_labels_or_earlier_answers(server):
    # The model names its top-1 class only; other names are learnt from answers.
    with ServingClient(server.address, "colors", version=1) as c:
        (p,) = c.predict([png(RED)], top_k=3)
        assert [t.class_name for t in p.top_k] == ["red", None, None]
        c.predict([png(GREEN), png(BLUE)])
        (p,) = c.predict([png(RED)], top_k=3)
        assert [t.class_name for t in p.top_k] == [CLASSES[t.class_id] for t in p.top_k]
    with ServingClient(server.address, "colors", version=1, labels=CLASSES) as c:
        (p,) = c.predict([png(BLUE)], top_k=3)
        assert [t.class_name for t in p.top_k] == [CLASSES[t.class_id] for t in p.top_k]
        assert p.top_k[0].class_name == "blue"


def test_version_and_label_selection(server):
    def top1(**kw):
        with ServingClient(server.address, "colors", **kw) as c:
            p = c.predict([png(RED)])[0]
            return p.model_version, p.top_k[0].class_name

    assert top1() == (2, "green")  # version 2 rotates the classes
    assert top1(version=1) == (1, "red")
    assert top1(version_label="stable") == (1, "red")
    for kw, code, text in (
            ({"version": 7}, Code.NOT_FOUND, "version 7 of model 'colors' is not loaded"),
            ({"version_label": "canary"}, Code.INVALID_ARGUMENT,
             "Unrecognized servable version label: canary")):
        with pytest.raises(ServingError) as e:
            top1(**kw)
        assert e.value.code == code and text in e.value.details


def test_metadata_and_status(client):
    meta = client.metadata()
    assert set(meta) == {"classification", "serving_default", "serving_images"}
    assert meta["serving_images"]["inputs"] == {"images": ("DT_STRING", [-1])}
    assert meta["serving_images"]["outputs"]["probabilities"] == ("DT_FLOAT", [-1, 3])
    assert meta["serving_default"]["version"] == 2
    status = client.status()
    assert [(s["version"], s["state"], s["error_code"]) for s in status] == \
        [(2, "AVAILABLE", 0), (1, "AVAILABLE", 0)]


def test_classify_uses_the_classification_signature(client):
    (classes,) = client.classify([png(BLUE)])
    assert [label for label, _ in classes] == list(CLASSES)
    probs = client.predict([png(BLUE)])[0].probabilities
    np.testing.assert_allclose([s for _, s in classes], probs, rtol=1e-6)
    # As TF Serving's classifier.cc: other signatures are refused, saying why.
    for signature, text in (("serving_default", "Expected one or two output Tensors, found 3"),
                            ("serving_images", "Expected one or two output Tensors, found 3"),
                            ("nope", "No signature was found with the name: nope")):
        with pytest.raises(ServingError) as e:
            client.classify([png(BLUE)], signature_name=signature)
        assert e.value.code == Code.INVALID_ARGUMENT and text in e.value.details
    with pytest.raises(ServingError) as e:
        client.classify([])
    assert e.value.code == Code.INVALID_ARGUMENT and "request has no input" in e.value.details


def test_classify_merges_the_context_into_each_example(server):
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import classification_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "colors"
    request.model_spec.version.value = 1
    request.model_spec.signature_name = "classification"
    listed = request.input.example_list_with_context
    listed.context.CopyFrom(example_pb2.Example.FromString(sigs.image_example(png(GREEN))))
    listed.examples.add()  # no image of its own: takes the context's
    with grpc.insecure_channel(server.address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(
            request, timeout=10)
    (result,) = response.result.classifications
    assert max(result.classes, key=lambda c: c.score).label == "green"


def test_health_checking(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "colors", "tensorflow.serving.PredictionService"):
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------------------
# Bad requests: each one answered with its status; the server keeps serving.
def _tensor(values, dtype=types_pb2.DT_STRING, shape=None):
    t = tensor_pb2.TensorProto(dtype=dtype)
    if dtype == types_pb2.DT_STRING:
        t.string_val.extend(values)
    else:
        t.float_val.extend(values)
    for d in (shape if shape is not None else [len(values)]):
        t.tensor_shape.dim.add(size=d)
    return t


def bad_requests():
    """(what, model, signature, version, inputs, expected code, text in the message)."""
    ok = png(RED)
    bomb = png((0, 0, 0), size=(2000, 1000))  # 2 Mpx in a few KB: over MAX_PIXELS
    return [
        ("wrong input key", "colors", "serving_images", None, {"image": _tensor([ok])},
         Code.INVALID_ARGUMENT, "unknown input(s) ['image']; missing input(s) ['images']"),
        ("wrong dtype", "colors", "serving_images", None,
         {"images": _tensor([1.0], types_pb2.DT_FLOAT)},
         Code.INVALID_ARGUMENT, "has dtype DT_FLOAT; signature 'serving_images' expects DT_STRING"),
        ("wrong rank", "colors", "serving_images", None, {"images": _tensor([ok], shape=[1, 1])},
         Code.INVALID_ARGUMENT, "has shape [1, 1]"),
        ("not an image", "colors", "serving_images", None,
         {"images": _tensor([ok, b"this is text"])},
         Code.INVALID_ARGUMENT, "images[1]: not a JPEG, PNG, GIF or BMP image"),
        ("unsupported format", "colors", "serving_images", None,
         {"images": _tensor([png(RED, fmt="TIFF")])},
         Code.INVALID_ARGUMENT, "TIFF images are not supported"),
        ("not a tf.Example", "colors", "serving_default", None,
         {"examples": _tensor([b"\xff\xfe garbage"])},
         Code.INVALID_ARGUMENT, "examples[0]: not a serialized tf.Example"),
        ("example without image", "colors", "serving_default", None,
         {"examples": _tensor([b""])}, Code.INVALID_ARGUMENT, "has no 'image' feature"),
        ("empty batch", "colors", "serving_images", None, {"images": _tensor([])},
         Code.INVALID_ARGUMENT, "empty batch"),
        ("string count mismatch", "colors", "serving_images", None,
         {"images": _tensor([ok], shape=[3])}, Code.INVALID_ARGUMENT, "holds 1 strings"),
        ("batch over limit", "colors", "serving_images", None,
         {"images": _tensor([ok] * (MAX_BATCH + 1))}, Code.RESOURCE_EXHAUSTED,
         f"batch of {MAX_BATCH + 1} is over this server's limit of {MAX_BATCH}"),
        ("payload over limit", "colors", "serving_images", None,
         {"images": _tensor([b"x" * (MAX_PAYLOAD + 1)])}, Code.RESOURCE_EXHAUSTED,
         "larger than max"),
        ("decompression bomb", "colors", "serving_images", None, {"images": _tensor([bomb])},
         Code.RESOURCE_EXHAUSTED, f"2000x1000 pixels is over the limit of {MAX_PIXELS}"),
        ("unknown model", "nope", "serving_images", None, {"images": _tensor([ok])},
         Code.NOT_FOUND, "model 'nope' is not served here"),
        ("no model name", "", "serving_images", None, {"images": _tensor([ok])},
         Code.INVALID_ARGUMENT, "model_spec.name is empty"),
        ("unknown signature", "colors", "serving_nope", None, {"images": _tensor([ok])},
         Code.FAILED_PRECONDITION, 'Serving signature key "serving_nope" not found'),
        ("unknown version", "colors", "serving_images", 99, {"images": _tensor([ok])},
         Code.NOT_FOUND, "version 99 of model 'colors' is not loaded"),
    ]


def send(address, model, signature, version, inputs, timeout=10):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for k, v in inputs.items():
        request.inputs[k].CopyFrom(v)
    with grpc.insecure_channel(address) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=timeout)


def test_burst_of_bad_requests_then_a_good_one(server):
    cases = bad_requests()
    errors = {}

    def one(case):
        what, model, signature, version, inputs, _, _ = case
        try:
            send(server.address, model, signature, version, inputs)
            errors[what] = None
        except grpc.RpcError as e:
            errors[what] = (e.code(), e.details())

    # Concurrently, twice over: the server must survive a burst, not one at a time.
    threads = [threading.Thread(target=one, args=(c,)) for c in cases * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for what, *_, code, text in cases:
        assert errors[what] is not None, f"{what}: accepted"
        assert errors[what][0] == code, f"{what}: {errors[what]}"
        assert text in errors[what][1], f"{what}: {errors[what][1]!r}"
    response = send(server.address, "colors", "serving_images", None,
                    {"images": _tensor([png(BLUE)])})
    assert tf.make_ndarray(response.outputs["class_names"]).tolist() == [b"red"]  # version 2


# ---------------------------------------------------------------------------
def test_newly_pushed_version_is_served_without_restart(models, tmp_path):
    import portpicker

    base = str(tmp_path / "colors")
    port = portpicker.pick_unused_port()
    srv = ModelServer(base, "colors", port=port, poll_interval_s=0.2).start()
    try:
        # Nothing pushed yet: the port stays closed (as TF Serving's until its
        # initial load), so a client meets UNAVAILABLE, retried until it gives up.
        fast = RetryPolicy(max_attempts=3, initial_backoff_s=0.05)
        with ServingClient(f"127.0.0.1:{port}", "colors", timeout_s=5, retry=fast) as c:
            with pytest.raises(ServingError) as e:
                c.predict([png(RED)])
            assert e.value.code == Code.UNAVAILABLE and e.value.attempts == 3
            assert srv.address is None and not srv.wait_until_available(0.1)

            push(models[0], base, 1)
            assert c.wait_until_available(60) == 1
            assert c.predict([png(RED)])[0].top_k[0].class_name == "red"

            push(models[1], base, 2)
            wait_for(lambda: [s["state"] for s in c.status()] == ["AVAILABLE", "END"])
            p = c.predict([png(RED)])[0]
            assert (p.model_version, p.top_k[0].class_name) == (2, "green")

            # A broken push is reported and the last good version keeps serving.
            os.makedirs(os.path.join(base, "3"))
            with open(os.path.join(base, "3", "saved_model.pb"), "wb") as f:
                f.write(b"not a SavedModel")
            wait_for(lambda: c.status()[0]["state"] == "END" and c.status()[0]["version"] == 3)
            assert "load failed" in c.status()[0]["error_message"]
            assert c.predict([png(RED)])[0].model_version == 2

            # Every version removed: nothing is served, and health checks say so.
            shutil.rmtree(base)
            wait_for(lambda: all(s["state"] == "END" for s in c.status()))
            with pytest.raises(ServingError) as e:
                c.predict([png(RED)])
            assert e.value.code == Code.NOT_FOUND and "Servable not found" in e.value.details
            with grpc.insecure_channel(srv.address) as channel:
                assert health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
                    health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        srv.stop()


def wait_for(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


# ---------------------------------------------------------------------------
# Client behaviour against scripted servers.
class Scripted(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, failures, code, delay=0.0):
        self.failures, self.code, self.delay, self.calls = failures, code, delay, 0

    def Predict(self, request, context):
        self.calls += 1
        time.sleep(self.delay)
        if self.calls <= self.failures:
            context.abort(self.code, f"scripted failure {self.calls}")
        n = len(request.inputs["images"].string_val)
        response = predict_pb2.PredictResponse()
        response.model_spec.version.value = 5
        response.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(
            np.tile([[0.1, 0.7, 0.2]], (n, 1)).astype(np.float32)))
        response.outputs["class_ids"].CopyFrom(tf.make_tensor_proto(np.ones(n, np.int64)))
        response.outputs["class_names"].CopyFrom(tf.make_tensor_proto([b"green"] * n))
        return response


@pytest.fixture
def scripted():
    from concurrent import futures

    servers = []

    def start(servicer):
        srv = grpc.server(futures.ThreadPoolExecutor(4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, srv)
        port = srv.add_insecure_port("127.0.0.1:0")
        srv.start()
        servers.append(srv)
        return f"127.0.0.1:{port}"

    yield start
    for srv in servers:
        srv.stop(0)


def test_retries_unavailable_with_backoff(scripted):
    servicer = Scripted(2, Code.UNAVAILABLE)
    policy = RetryPolicy(initial_backoff_s=0.2, multiplier=2.0, jitter=0.0)
    with ServingClient(scripted(servicer), "m", retry=policy) as c:
        start = time.monotonic()
        (p,) = c.predict([png(RED)])
    assert servicer.calls == 3 and p.top_k[0].class_name == "green"
    assert time.monotonic() - start >= 0.2 + 0.4  # two back-offs, the second one doubled


@pytest.mark.parametrize("code", [Code.INVALID_ARGUMENT, Code.INTERNAL, Code.RESOURCE_EXHAUSTED])
def test_other_errors_are_not_retried(scripted, code):
    servicer = Scripted(1, code)
    with ServingClient(scripted(servicer), "m") as c:
        with pytest.raises(ServingError) as e:
            c.predict([png(RED)])
    assert servicer.calls == 1 and e.value.code == code and e.value.attempts == 1


def test_deadline_covers_the_call(scripted):
    servicer = Scripted(0, Code.OK, delay=1.5)
    with ServingClient(scripted(servicer), "m", timeout_s=0.3) as c:
        start = time.monotonic()
        with pytest.raises(ServingError) as e:
            c.predict([png(RED)])
    assert e.value.code == Code.DEADLINE_EXCEEDED and time.monotonic() - start < 1.4


def test_unreachable_server_gives_up_at_the_deadline():
    import portpicker

    port = portpicker.pick_unused_port()
    with ServingClient(f"127.0.0.1:{port}", "m", timeout_s=1.0) as c:
        start = time.monotonic()
        with pytest.raises(ServingError) as e:
            c.predict([png(RED)])
    assert e.value.code == Code.UNAVAILABLE and e.value.attempts > 1
    assert time.monotonic() - start < 3


def test_encode_image_rejects_what_it_cannot_send():
    with pytest.raises(ValueError, match="uint8"):
        encode_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="HxW"):
        encode_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError):
        encode_image(3)
    name, data = encode_image(np.full((5, 6), 7, np.uint8))
    assert name == "<array 5x6>" and Image.open(io.BytesIO(data)).size == (6, 5)
    assert string_tensor([b"a", b"b"]).tensor_shape.dim[0].size == 2


# ---------------------------------------------------------------------------
def _self_signed(tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_tls(models, tmp_path):
    cert, key = _self_signed(tmp_path)
    base = str(tmp_path / "colors")
    push(models[0], base, 1)
    with ModelServer(base, "colors", host="localhost", tls_cert=cert, tls_key=key) as srv:
        assert srv.wait_until_available(60)
        with ServingClient(srv.address, "colors", root_certificates=cert) as c:
            assert c.predict([png(BLUE)])[0].top_k[0].class_name == "blue"
        # A plaintext client cannot talk to it.
        with ServingClient(srv.address, "colors", timeout_s=1) as c:
            with pytest.raises(ServingError) as e:
                c.predict([png(BLUE)])
            assert e.value.code == Code.UNAVAILABLE


# ---------------------------------------------------------------------------
def test_cli_predict(server, tmp_path, capsys):
    files = []
    for name, color in (("r.png", RED), ("g.jpg", GREEN)):
        (tmp_path / name).write_bytes(png(color, fmt="JPEG" if name.endswith("jpg") else "PNG"))
        files.append(str(tmp_path / name))
    labels = tmp_path / "label"
    labels.write_text("\n".join(CLASSES) + "\n")
    args = ["predict", "--server", server.address, "--model", "colors", "--top-k", "2",
            "--version", "1", "--labels", str(labels), "--batch-size", "1", *files]
    assert cli.main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in out] == files
    assert [[c["class_name"] for c in r["top_k"]][0] for r in out] == ["red", "green"]
    assert all(r["model_version"] == 1 and len(r["top_k"]) == 2 for r in out)
    assert cli.main(args + ["--signature", "serving_default"]) == 0
    text = capsys.readouterr().out
    assert f"{files[0]} (version 1)" in text and "red" in text
    assert cli.main(["predict", "--server", server.address, "--model", "nope",
                             files[0]]) == 1
    assert "NOT_FOUND: model 'nope' is not served here" in capsys.readouterr().err
    assert cli.main(["predict", "--server", server.address, "--model", "colors",
                             str(tmp_path / "missing.jpg")]) == 2


def test_tfx_transfer_cli_has_the_serving_commands():
    from tfx_transfer.pipeline import cli

    parser = cli.build_parser()
    args = parser.parse_args(["predict", "--server", "h:1", "--model", "m", "a.jpg", "b.png",
                              "--top-k", "3", "--json"])
    assert args.func is serving_cli.cmd_predict and args.images == ["a.jpg", "b.png"]
    args = parser.parse_args(["serve", "--model-base-path", "/m", "--model-name", "m",
                              "--port", "0", "--max-batch-size", "8"])
    assert args.func is serving_cli.cmd_serve and args.max_batch_size == 8


def test_serve_command_shuts_down_gracefully_on_sigterm(models, tmp_path):
    base = str(tmp_path / "colors")
    push(models[0], base, 1)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfx_transfer.pipeline.cli", "serve", "--model-base-path", base,
         "--model-name", "colors", "--port", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line + proc.stderr.read()
        with ServingClient(line.split()[-1], "colors") as c:
            c.wait_until_available(120)
            assert c.predict([png(GREEN)])[0].top_k[0].class_name == "green"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
