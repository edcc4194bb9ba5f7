"""Every registry entry builds with weights=None, runs a forward pass, and
cuts into layer groups that never split a residual block."""
import os

import numpy as np
import pytest

from tfx_transfer.modules import backbones

FAST = [b.name for b in backbones.REGISTRY.values() if not b.slow]
SLOW = [b.name for b in backbones.REGISTRY.values() if b.slow]

SEED_FAMILIES = {"VGG16", "VGG19", "InceptionV3", "InceptionResNetV2", "ResNet50", "ResNet101",
                 "ResNet152", "ResNet50V2", "ResNet101V2", "ResNet152V2", "DenseNet121",
                 "DenseNet169", "DenseNet201", "Xception", "MobileNet", "MobileNetV2",
                 "MobileNetV3Small", "MobileNetV3Large", "NASNetMobile", "NASNetLarge"} | \
    {f"EfficientNetB{i}" for i in range(8)} | \
    {f"EfficientNetV2{s}" for s in ("B0", "B1", "B2", "B3", "S", "M", "L")} | \
    {f"ConvNeXt{s}" for s in ("Tiny", "Small", "Base", "Large", "XLarge")}


def test_registry_has_every_keras_applications_family():
    assert set(backbones.names()) == SEED_FAMILIES


def _check(name):
    import tf_keras as keras

    entry = backbones.get(name)
    size = max(entry.min_size, 32)
    model = entry.build(size, weights=None)
    x = np.random.RandomState(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    y = model(entry.preprocess_input(x.copy()), training=False)
    assert y.shape[0] == 2 and len(y.shape) == 4 and np.isfinite(y.numpy()).all()

    groups = entry.layer_groups(model)
    flat = [l for g in groups for l in g]
    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    assert [id(l) for l in flat] == [id(l) for l in layers], "groups must cover every layer once, in order"
    assert len(groups) >= 4 and all(groups)
    group_of = {id(l): i for i, g in enumerate(groups) for l in g}
    # A residual/concat merge belongs to the block that computed its branch:
    # at least one input of every merge layer sits in the merge's own group.
    for layer in layers:
        if isinstance(layer, (keras.layers.Add, keras.layers.Concatenate)):
            inbound = [n.inbound_layers for n in layer._inbound_nodes]
            inbound = [l for ls in inbound for l in (ls if isinstance(ls, list) else [ls])]
            assert any(group_of.get(id(l)) == group_of[id(layer)] for l in inbound), \
                f"{name}: merge {layer.name} is cut off from its block"
    return groups


@pytest.mark.parametrize("name", FAST)
def test_backbone_builds_and_groups(name):
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_large_backbone_builds_and_groups(name):
    _check(name)


def test_resnet50_groups_are_its_residual_blocks():
    groups = _check("ResNet50")
    # stem + 3 + 4 + 6 + 3 bottleneck blocks, each ending at its _out activation
    assert len(groups) == 17
    assert all(g[-1].name.endswith("_out") for g in groups[1:])


def test_mobilenet_v1_groups_keep_depthwise_and_pointwise_together():
    groups = _check("MobileNet")
    assert len(groups) == 14  # stem + 13 depthwise-separable blocks
    for g in groups[1:]:
        names = {l.name.split("_")[1] for l in g if l.name.startswith("conv_")}
        assert {"dw", "pw"} <= names


def test_unknown_backbone_suggests_a_name():
    with pytest.raises(KeyError, match="did you mean MobileNetV2"):
        backbones.get("mobilenetv2x")


def test_offline_weights_error_names_the_file(tmp_path, monkeypatch):
    from tf_keras.src.utils import data_utils

    monkeypatch.setenv("HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: network unreachable")

    monkeypatch.setattr(data_utils, "get_file", offline)
    monkeypatch.setattr(backbones, "shared_weights_dir", lambda: str(tmp_path / "no-shared"))
    with pytest.raises(backbones.WeightsUnavailable) as e:
        backbones.resolve_weights("ResNet50", 64, "imagenet")
    message = str(e.value)
    assert "network unreachable" in message and "(Exception)" not in message  # the cause
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / ".keras" / "models") in message
    assert "--weights none" in message
    assert "(or " not in message  # no stand-in file for ResNet50


def test_offline_error_offers_the_224_file_once(tmp_path, monkeypatch):
    from tf_keras.src.utils import data_utils

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(backbones, "shared_weights_dir", lambda: str(tmp_path / "no-shared"))
    monkeypatch.setattr(data_utils, "get_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{}_no_top.h5"
    for size, stand_in in ((96, True), (224, False)):
        with pytest.raises(backbones.WeightsUnavailable) as e:
            backbones.resolve_weights("MobileNetV2", size, "imagenet")
        message = str(e.value)
        assert f"Keras wanted the file: {name.format(size)}" in message
        assert (f"(or {name.format(224)} there" in message) == stand_in, message


def test_mobilenet_224_file_stands_in_for_other_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = tmp_path / ".keras" / "models"
    cache.mkdir(parents=True)
    f = cache / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    f.write_bytes(b"x")
    assert backbones.resolve_weights("MobileNetV2", 96, "imagenet") == str(f)
    exact = cache / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    exact.write_bytes(b"x")
    assert backbones.resolve_weights("MobileNetV2", 96, "imagenet") == "imagenet"
    assert backbones.resolve_weights("MobileNetV2", 96, "none") is None
    assert backbones.resolve_weights("MobileNetV2", 96, str(f)) == str(f)


def test_weights_baked_into_the_image_are_found_when_home_is_empty(tmp_path, monkeypatch):
    # A TFJob worker: HOME is a fresh emptyDir, the files sit in the image's folder.
    from tfx_transfer.modules import contract

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    baked = tmp_path / "baked"
    baked.mkdir()
    f = baked / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    f.write_bytes(b"x")
    monkeypatch.setenv(contract.WEIGHTS_DIR_ENV, str(baked))
    assert backbones.resolve_weights("MobileNetV2", 96, "imagenet") == str(f)
    assert backbones.resolve_weights("MobileNetV2", 224, "imagenet") == str(f)


def test_shared_weights_beside_the_checkout_are_found_offline(tmp_path, monkeypatch):
    """As `make demo` passes ../shared/weights' file, `--weights imagenet` finds it there."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    shared = tmp_path / "shared" / "weights"
    shared.mkdir(parents=True)
    monkeypatch.setattr(backbones, "shared_weights_dir", lambda: str(shared))
    f = shared / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    f.write_bytes(b"x")
    assert backbones.resolve_weights("MobileNetV2", 96, "imagenet") == str(f)
    assert backbones.resolve_weights("MobileNetV2", 224, "imagenet") == str(f)
    # The real folder is the checkout's sibling, as the Makefile's SHARED.
    repo = os.path.dirname(os.path.dirname(os.path.realpath(backbones.__file__)))
    monkeypatch.undo()
    assert backbones.shared_weights_dir() == os.path.join(os.path.dirname(repo), "shared", "weights")


def test_real_imagenet_weights_load_from_a_path(shared_weights):
    entry = backbones.get("MobileNetV2")
    model = entry.build(96, weights=shared_weights)
    assert model.count_params() > 2_000_000
