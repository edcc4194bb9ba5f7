"""Shared fixtures. The tiny pipeline run happens once per session and every
end-to-end test (summary, serving round trip, projector) reads its outputs."""
import importlib.util
import os
import shutil
import tarfile

import pytest

from tfx_transfer.modules import keras_compat  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "data", "cifar10-sample")
SHARED = os.environ.get("TFX_TRANSFER_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
CIFAR_TAR = os.path.join(SHARED, "datasets", "cifar10-jpeg.tar.gz")
MNV2_NO_TOP = os.path.join(SHARED, "weights",
                           "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")


CIFAR_GROUPS = {c: "vehicle" for c in ("airplane", "automobile", "ship", "truck")}
CIFAR_GROUPS.update({c: "animal" for c in ("bird", "cat", "deer", "dog", "frog", "horse")})


def tiny_config(output, **overrides):
    from tfx_transfer.pipeline.config import RunConfig

    values = dict(data=SAMPLE, backbone="MobileNetV2", weights="none", image_size=32,
                  epochs=2, batch_size=32, output=str(output), projector_samples=100,
                  min_accuracy=0.0, max_accuracy_drop=1.0, class_groups=CIFAR_GROUPS,
                  # Random weights at 32 px are near chance: bless them anyway so the
                  # push/serve tests have a model.
                  bless_over_majority=False,
                  projector=importlib.util.find_spec("tfx_transfer.components.embedding_projector") is not None)
    values.update(overrides)
    return RunConfig.from_dict(values)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(config, summary) of one real LocalDagRunner run on the bundled sample."""
    from tfx_transfer.pipeline.runners import local as runners

    config = tiny_config(tmp_path_factory.mktemp("tiny_run"))
    summary = runners.run(config)
    return config, summary


@pytest.fixture(scope="session")
def shared_weights():
    if not os.path.exists(MNV2_NO_TOP):
        pytest.skip(f"ImageNet weights not available ({MNV2_NO_TOP})")
    return MNV2_NO_TOP


@pytest.fixture(scope="session")
def cifar10_dir():
    """Full CIFAR-10 as JPEG folders, unpacked once under ~/.cache."""
    if not os.path.exists(CIFAR_TAR):
        pytest.skip(f"CIFAR-10 not available ({CIFAR_TAR})")
    target = os.path.join(os.path.expanduser("~"), ".cache", "tfx-transfer", "cifar10")
    if not os.path.exists(os.path.join(target, "_DONE")):
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        with tarfile.open(CIFAR_TAR) as t:
            t.extractall(target)
        open(os.path.join(target, "_DONE"), "w").close()
    return target
