"""EmbeddingProjector: the numbers on data whose answer is known, seeded
projections, TensorBoard-loadable files, and the component in the tiny
end-to-end pipeline."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

from tfx_transfer.components import projections as P


def two_clusters(n=200, dim=50, gap=20.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array(["a", "b"] * (n // 2))
    x = rng.normal(0, 1, (n, dim)).astype(np.float32)
    x[labels == "b", 0] += gap
    return x, labels


def load_projector(logdir):
    """What TensorBoard's projector plugin serves for logdir: (config, {name: tensor},
    metadata lines, {name: sprite bytes})."""
    import werkzeug.test
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector import projector_plugin

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    context = base_plugin.TBContext(
        logdir=logdir, multiplexer=multiplexer,
        data_provider=data_provider.MultiplexerDataProvider(multiplexer, logdir))
    apps = projector_plugin.ProjectorPlugin(context).get_plugin_apps()

    def get(route, **params):
        response = werkzeug.test.Client(apps[route]).get("/", query_string=params)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_data()

    assert json.loads(get("/runs")) == ["."]
    config = json.loads(get("/info", run="."))
    tensors, sprites = {}, {}
    metadata = None
    for e in config["embeddings"]:
        shape = [int(v) for v in e["tensorShape"]]
        data = np.frombuffer(get("/tensor", run=".", name=e["tensorName"]), dtype=np.float32)
        tensors[e["tensorName"]] = data.reshape(shape)
        metadata = get("/metadata", run=".", name=e["tensorName"]).decode().splitlines()
        sprites[e["tensorName"]] = get("/sprite_image", run=".", name=e["tensorName"])
    return config, tensors, metadata, sprites


# --------------------------------------------------------------------------
def test_separated_clusters_score_high():
    # within-cluster distances ~ sqrt(2 * 50) = 10, between ~ sqrt(100 + 60**2) = 61:
    # silhouette ~ 1 - 10 / 61
    x, labels = two_clusters(gap=60.0)
    assert P.silhouette(x, labels) > 0.8
    assert P.knn_accuracy(x, labels, seed=0) > 0.99
    coords = P.project(x, "pca", seed=0)
    assert P.silhouette(coords, labels) > 0.8
    assert P.trustworthiness(x, coords) > 0.5


def test_shuffled_labels_score_at_chance():
    x, labels = two_clusters(n=400)
    shuffled = np.random.default_rng(1).permutation(labels)
    assert abs(P.silhouette(x, shuffled)) < 0.05
    assert abs(P.knn_accuracy(x, shuffled, seed=0) - 0.5) < 0.1
    # ten random classes on one blob: chance is 1/10
    rng = np.random.default_rng(2)
    blob = rng.normal(0, 1, (500, 20))
    random10 = rng.integers(0, 10, 500).astype(str)
    assert abs(P.knn_accuracy(blob, random10, seed=0) - 0.1) < 0.07


def test_trustworthiness_falls_when_projection_scrambles_neighbours():
    x, _ = two_clusters(n=200)
    good = P.project(x, "pca", seed=0)
    scrambled = np.random.default_rng(0).permutation(good)
    assert P.trustworthiness(x, scrambled) < P.trustworthiness(x, good) - 0.2


def test_stratified_sample_keeps_class_shares():
    labels = np.array(["a"] * 600 + ["b"] * 300 + ["c"] * 100)
    idx = P.stratified_sample(labels, 100, seed=3)
    assert len(idx) == 100 and len(set(idx)) == 100 and (np.diff(idx) > 0).all()
    counts = {c: int((labels[idx] == c).sum()) for c in "abc"}
    assert counts == {"a": 60, "b": 30, "c": 10}
    np.testing.assert_array_equal(idx, P.stratified_sample(labels, 100, seed=3))
    assert not np.array_equal(idx, P.stratified_sample(labels, 100, seed=4))
    # 7 places over 3 equal classes: the remainder goes somewhere, the total is exact
    assert len(P.stratified_sample(np.array(list("abc") * 5), 7, seed=0)) == 7
    np.testing.assert_array_equal(P.stratified_sample(labels, 5000, seed=0), np.arange(1000))


@pytest.mark.parametrize("method", P.METHODS + ("tsne-fft",))
def test_projections_are_seeded(method, monkeypatch):
    fft = method == "tsne-fft"
    if fft:  # the gradient used from TSNE_FFT_FROM points on; ~8 s a call
        monkeypatch.setattr(P, "TSNE_FFT_FROM", 0)
        method = "tsne"
    x, labels = two_clusters(n=150, gap=8.0)
    a = P.project(x, method, seed=7)
    b = P.project(x, method, seed=7)
    assert a.shape == (150, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    if method != "pca" and not fft:  # PCA has no randomness to seed
        assert not np.allclose(a, P.project(x, method, seed=8))
    assert P.silhouette(a, labels) > 0.5


def test_umap_compiled_code_is_cached_between_runs():
    # numba caches only functions marked cache=True; umap marks few, so each
    # new process compiled them again (~20 s of a 100-point projection).
    umap = P.import_umap()
    from numba.core import config

    assert type(umap.umap_.smooth_knn_dist._cache).__name__ == "FunctionCache"
    assert config.CACHE_DIR


def test_tensorboard_files_load_after_moving(tmp_path):
    rng = np.random.default_rng(0)
    before, after = rng.normal(size=(30, 8)), rng.normal(size=(30, 4))
    labels = [f"class {i % 3}" for i in range(30)]
    names = [f"dir/img\t{i}.jpg" for i in range(30)]  # a tab must not break the TSV
    thumbs = rng.integers(0, 255, (30, 32, 32, 3), dtype=np.uint8)
    P.write_tensorboard(str(tmp_path / "tb"), {"before": before, "after": after},
                        labels, labels[::-1], names, thumbs)
    moved = str(tmp_path / "elsewhere")
    shutil.move(str(tmp_path / "tb"), moved)  # paths inside must be relative

    config, tensors, metadata, sprites = load_projector(moved)
    np.testing.assert_allclose(tensors["before/.ATTRIBUTES/VARIABLE_VALUE"], before, rtol=1e-6)
    np.testing.assert_allclose(tensors["after/.ATTRIBUTES/VARIABLE_VALUE"], after, rtol=1e-6)
    assert metadata[0] == "label\tpredicted\tfilename" and len(metadata) == 31
    assert metadata[1].split("\t") == ["class 0", labels[-1], "dir/img 0.jpg"]
    from PIL import Image
    import io

    sprite = Image.open(io.BytesIO(next(iter(sprites.values()))))
    assert sprite.size == (6 * 32, 6 * 32)  # ceil(sqrt(30)) thumbnails a side
    np.testing.assert_array_equal(np.asarray(sprite)[32:64, 0:32], thumbs[6])
    assert all(e["sprite"]["singleImageDim"] == [32, 32] for e in config["embeddings"])


def test_sprite_shrinks_thumbnails_to_fit(monkeypatch):
    monkeypatch.setattr(P, "SPRITE_MAX_PX", 64)
    thumbs = np.random.default_rng(0).integers(0, 255, (30, 32, 32, 3), dtype=np.uint8)
    image, side = P.sprite(thumbs)
    assert side == 64 // 6 and image.shape == (6 * side, 6 * side, 3)


def _report(out_dir, before, after, labels):
    from tfx_transfer.components.embedding_projector import project_and_report

    n = len(labels)
    return project_and_report(str(out_dir), before, after, [f"f{i}" for i in range(n)],
                              list(labels), list(labels), ["a", "b"],
                              np.zeros((n, 32, 32, 3), dtype=np.uint8), 0,
                              {"num_samples": n, "timings_s": {}}, "test")


def test_report_before_and_after(tmp_path):
    from tfx_transfer.components.embedding_projector import FILES

    before, labels = two_clusters(n=60, gap=1.0)
    after, _ = two_clusters(n=60, gap=30.0, seed=1)
    metrics = _report(tmp_path, before, after, labels)
    assert metrics["before_equals_after"] is False and not metrics["notes"]
    assert metrics["after"]["silhouette"] > metrics["before"]["silhouette"] + 0.3
    assert metrics["after"]["knn_accuracy"] == 1.0 > metrics["before"]["knn_accuracy"]
    assert all(metrics["timings_s"][f"{m}_after"] > 0 for m in ("tsne", "umap"))
    for name in FILES.values():
        assert os.path.exists(tmp_path / name)
    with open(tmp_path / "points.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 and rows[0]["filename"] == "f0" and rows[1]["label"] == "b"
    assert {f"{m}_{s}_{a}" for m in P.METHODS for s in P.STAGES for a in "xy"} <= set(rows[0])
    assert json.load(open(tmp_path / "metrics.json"))["after"] == metrics["after"]
    html = open(tmp_path / "report.html").read()
    assert f"{metrics['before']['silhouette']:.3f}" in html and "base64," in html


def test_report_when_training_left_embeddings_unchanged(tmp_path):
    """Linear probe without a hidden layer: after == before, said so, computed once."""
    x, labels = two_clusters(n=60, gap=10.0)
    metrics = _report(tmp_path, x, x.copy(), labels)
    assert metrics["before_equals_after"] is True and metrics["notes"]
    assert metrics["after"] == metrics["before"]
    assert metrics["timings_s"]["tsne_after"] == 0.0 and metrics["timings_s"]["tsne_before"] > 0
    with open(tmp_path / "points.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["pca_before_x"] == rows[0]["pca_after_x"]
    # tiny embeddings (an untrained backbone gives ~1e-13) that differ are not "equal"
    tiny = x * 1e-13
    assert _report(tmp_path, tiny, tiny * 1.5, labels)["before_equals_after"] is False


# --------------------------------------------------------------------------
@pytest.mark.e2e
def test_projector_in_the_tiny_pipeline(tiny_run):
    config, summary = tiny_run
    assert summary["component_states"]["EmbeddingProjector"] == "COMPLETE"
    proj = summary["projector"]
    assert proj["num_samples"] == 100 and proj["eval_examples"] == 100
    assert proj["num_classes"] == 10
    for stage in P.STAGES:
        numbers = proj[stage]
        assert numbers["dim"] == 1280  # MobileNetV2's pooled width
        assert -1 <= numbers["silhouette"] <= 1
        assert 0 <= numbers["knn_accuracy"] <= 1
        assert set(numbers["projections"]) == set(P.METHODS)
        for method, p in numbers["projections"].items():
            assert -1 <= p["silhouette"] <= 1 and 0 <= p["trustworthiness"] <= 1
            assert proj["timings_s"][f"{method}_{stage}"] >= 0
    # Linear probe, no hidden layer: the penultimate layer is the frozen backbone's pooled
    # output, so a correctly rebuilt "before" (same backbone, size, pooling, Transform and,
    # with weights=none, the Trainer's seeded initialisation) equals "after" exactly.
    assert proj["mode"] == "linear_probe" and proj["hidden_units"] == 0
    assert proj["before_equals_after"] is True
    assert proj["after"] == proj["before"] and len(proj["notes"]) == 2

    files = proj["files"]
    with open(files["points"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 100
    assert {r["label"] for r in rows} == set(summary["classes"])
    for r in rows:  # filenames are relative to the data folder: test/<class>/<file>
        assert r["filename"].split("/")[:2] == ["test", r["label"]]
        assert r["predicted"] in summary["classes"]
    accuracy = np.mean([r["label"] == r["predicted"] for r in rows])
    assert proj["sample_accuracy"] == pytest.approx(accuracy)
    # the whole eval split is the sample here, so it is the Evaluator's accuracy
    assert proj["sample_accuracy"] == pytest.approx(summary["metrics"]["accuracy"], abs=1e-6)
    for stage in P.STAGES:
        for method in P.METHODS:
            xy = np.array([[float(r[f"{method}_{stage}_x"]), float(r[f"{method}_{stage}_y"])]
                           for r in rows])
            assert np.isfinite(xy).all() and xy.std(axis=0).min() > 0

    import matplotlib.image

    figure = matplotlib.image.imread(files["figure"])
    assert figure.shape[0] > 500 and figure.shape[1] > 1000
    html = open(files["report"]).read()
    assert "data:image/png;base64," in html and f"{proj['after']['knn_accuracy']:.3f}" in html

    config_, tensors, metadata, _ = load_projector(files["tensorboard"])
    assert {t.shape for t in tensors.values()} == {(100, 1280)}
    assert [line.split("\t")[0] for line in metadata[1:]] == [r["label"] for r in rows]

    on_disk = json.load(open(os.path.join(config.deploy.output, "summary.json")))
    assert on_disk["projector"]["after"] == proj["after"]
    from tfx_transfer.pipeline.runners.compare import row

    r = row(config, on_disk)
    assert r["silhouette_after"] == proj["after"]["silhouette"]
    assert r["knn_before"] == proj["before"]["knn_accuracy"]


@pytest.mark.e2e
def test_projection_artifact_is_typed_in_mlmd(tiny_run):
    from tfx_transfer.components.embedding_projector import EmbeddingProjection
    from tfx_transfer.pipeline.runners.summary import _store

    config, summary = tiny_run
    store = _store(config)
    artifacts = store.get_artifacts_by_type(EmbeddingProjection.TYPE_NAME)
    assert [a.uri for a in artifacts] == [summary["projector"]["uri"]]
    props = artifacts[0].custom_properties
    assert props["num_samples"].int_value == 100
    assert props["knn_accuracy_after"].double_value == pytest.approx(
        summary["projector"]["after"]["knn_accuracy"])
