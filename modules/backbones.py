"""The backbone registry: one entry per Keras Applications model.

An entry knows how to build the model, its default input size, how to
normalise pixels its way, and how to cut it into ordered layer groups (the
blocks of its architecture) so that "unfreeze the top N" never cuts a
residual block in half. Importing this module does not import TensorFlow:
the CLI and config validation use it on machines that only submit runs.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import re
from typing import Callable, Dict, List, Optional

from tfx_transfer.modules import contract

# How each family normalises pixels (documentation; the function itself comes
# from the family's module, so it is exactly what Keras Applications does).
PREPROCESS_MODES = {
    "caffe": "RGB->BGR, ImageNet mean subtracted, no scaling",
    "tf": "scaled to [-1, 1]",
    "torch": "scaled to [0, 1], ImageNet mean/std normalised",
    "in-model": "raw [0, 255]; the model normalises internally",
}


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    module: str  # tf_keras.applications.<module>
    default_size: int
    preprocessing: str  # key of PREPROCESS_MODES
    # Layer grouping. `block_pattern`: a regex whose first match in a layer's
    # name is the block key; consecutive layers with one key form a group and
    # unkeyed layers join the group before them. `boundary_pattern`: for
    # families without per-block names (Inception, Xception), a group ends at
    # each layer whose name matches.
    block_pattern: Optional[str] = None
    boundary_pattern: Optional[str] = None
    min_size: int = 32
    slow: bool = False  # very large: its forward-pass test is marked slow
    family: str = ""

    # ------------------------------------------------------------------
    @property
    def constructor(self) -> Callable:
        from tfx_transfer.modules import keras_compat  # noqa: F401  (selects tf_keras)
        import tf_keras

        return getattr(tf_keras.applications, self.name)

    @property
    def preprocess_input(self) -> Callable:
        from tfx_transfer.modules import keras_compat  # noqa: F401
        import tf_keras

        return getattr(tf_keras.applications, self.module).preprocess_input

    def build(self, image_size: Optional[int] = None, weights: Optional[str] = "imagenet"):
        """The backbone without its classifier, on image_size x image_size RGB."""
        size = image_size or self.default_size
        return self.constructor(include_top=False, weights=weights,
                                input_shape=(size, size, 3), pooling=None)

    def layer_groups(self, model) -> List[List]:
        """Ordered groups of the model's layers, input side first."""
        layers = [l for l in model.layers if l.__class__.__name__ != "InputLayer"]
        groups: List[List] = []
        if self.boundary_pattern:
            boundary = re.compile(self.boundary_pattern)
            current: List = []
            for layer in layers:
                current.append(layer)
                if boundary.search(layer.name):
                    groups.append(current)
                    current = []
            if current:
                # Trailing layers (final norm / activation) belong with the last block.
                if groups:
                    groups[-1].extend(current)
                else:
                    groups.append(current)
            return groups
        pattern = re.compile(self.block_pattern)
        key = object()
        for layer in layers:
            m = pattern.search(layer.name)
            # The first capture group, when the pattern has one, is the key:
            # it lets e.g. MobileNet's conv_dw_3 and conv_pw_3 share block 3.
            k = (m.group(1) if m.re.groups and m.group(1) else m.group(0)) if m else None
            if k is not None and k != key:
                groups.append([])
                key = k
            if not groups:
                groups.append([])  # the stem
            groups[-1].append(layer)
        return groups


def _e(name, module, size, prep, family, block=None, boundary=None, min_size=32, slow=False):
    return Backbone(name=name, module=module, default_size=size, preprocessing=prep,
                    block_pattern=block, boundary_pattern=boundary, min_size=min_size,
                    slow=slow, family=family)


_RESNET_BLOCK = r"conv\d_block\d+_"
_DENSENET_BLOCK = r"(conv\d_block\d+_|pool\d_)"
_EFFNET_BLOCK = r"block\d+[a-z]_"

_ENTRIES = [
    _e("VGG16", "vgg16", 224, "caffe", "VGG", block=r"block\d_"),
    _e("VGG19", "vgg19", 224, "caffe", "VGG", block=r"block\d_"),
    _e("InceptionV3", "inception_v3", 299, "tf", "Inception",
       boundary=r"^mixed\d+$", min_size=75),
    _e("InceptionResNetV2", "inception_resnet_v2", 299, "tf", "Inception",
       boundary=r"^(mixed_\d[a-z]|block(35|17|8)_\d+_ac|conv_7b_ac)$", min_size=75, slow=True),
    _e("ResNet50", "resnet", 224, "caffe", "ResNet", block=_RESNET_BLOCK),
    _e("ResNet101", "resnet", 224, "caffe", "ResNet", block=_RESNET_BLOCK),
    _e("ResNet152", "resnet", 224, "caffe", "ResNet", block=_RESNET_BLOCK, slow=True),
    _e("ResNet50V2", "resnet_v2", 224, "tf", "ResNetV2", block=_RESNET_BLOCK),
    _e("ResNet101V2", "resnet_v2", 224, "tf", "ResNetV2", block=_RESNET_BLOCK),
    _e("ResNet152V2", "resnet_v2", 224, "tf", "ResNetV2", block=_RESNET_BLOCK, slow=True),
    _e("DenseNet121", "densenet", 224, "torch", "DenseNet", block=_DENSENET_BLOCK),
    _e("DenseNet169", "densenet", 224, "torch", "DenseNet", block=_DENSENET_BLOCK),
    _e("DenseNet201", "densenet", 224, "torch", "DenseNet", block=_DENSENET_BLOCK),
    _e("Xception", "xception", 299, "tf", "Xception",
       boundary=r"^(add(_\d+)?|block14_sepconv2_act)$", min_size=71),
    _e("MobileNet", "mobilenet", 224, "tf", "MobileNet", block=r"conv_(?:pad_|dw_|pw_)(\d+)"),
    _e("MobileNetV2", "mobilenet_v2", 224, "tf", "MobileNetV2",
       block=r"(block_\d+_|expanded_conv_|Conv_1)"),
    _e("MobileNetV3Small", "mobilenet_v3", 224, "in-model", "MobileNetV3",
       block=r"(expanded_conv(_\d+)?/|Conv_1|conv_1)"),
    _e("MobileNetV3Large", "mobilenet_v3", 224, "in-model", "MobileNetV3",
       block=r"(expanded_conv(_\d+)?/|Conv_1|conv_1)"),
    _e("NASNetMobile", "nasnet", 224, "tf", "NASNet",
       boundary=r"^(normal_concat_\d+|reduction_concat_reduce_\d+|reduction_concat_stem_\d+)$"),
    _e("NASNetLarge", "nasnet", 331, "tf", "NASNet",
       boundary=r"^(normal_concat_\d+|reduction_concat_reduce_\d+|reduction_concat_stem_\d+)$",
       slow=True),
]
for _i, _size in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
    _ENTRIES.append(_e(f"EfficientNetB{_i}", "efficientnet", _size, "in-model", "EfficientNet",
                       block=_EFFNET_BLOCK, slow=_i >= 5))
for _suffix, _size in (("B0", 224), ("B1", 240), ("B2", 260), ("B3", 300),
                       ("S", 384), ("M", 480), ("L", 480)):
    _ENTRIES.append(_e(f"EfficientNetV2{_suffix}", "efficientnet_v2", _size, "in-model",
                       "EfficientNetV2", block=_EFFNET_BLOCK, slow=_suffix in ("M", "L")))
for _suffix in ("Tiny", "Small", "Base", "Large", "XLarge"):
    _ENTRIES.append(_e(f"ConvNeXt{_suffix}", "convnext", 224, "in-model", "ConvNeXt",
                       block=r"(stage_\d+_block_\d+|downsampling_block_\d+)",
                       slow=_suffix in ("Base", "Large", "XLarge")))

REGISTRY: Dict[str, Backbone] = {e.name: e for e in _ENTRIES}


def names() -> List[str]:
    return list(REGISTRY)


def closest(name: str) -> Optional[str]:
    lowered = {n.lower(): n for n in REGISTRY}
    if name.lower() in lowered:
        return lowered[name.lower()]
    match = difflib.get_close_matches(name, list(REGISTRY), n=1, cutoff=0.6)
    return match[0] if match else None


def get(name: str) -> Backbone:
    try:
        return REGISTRY[name]
    except KeyError:
        close = closest(name)
        hint = f" (did you mean {close}?)" if close else ""
        raise KeyError(f"unknown backbone {name!r}{hint}") from None


# ---------------------------------------------------------------------------
# ImageNet weights, offline-aware.
class WeightsUnavailable(RuntimeError):
    pass


class _WantedFile(Exception):
    def __init__(self, fname, origin):
        super().__init__(fname)
        self.fname, self.origin = fname, origin


def keras_cache_dir() -> str:
    """Where tf_keras looks for downloaded weight files (it ignores KERAS_HOME)."""
    home = os.path.join(os.path.expanduser("~"), ".keras")
    if not os.access(os.path.expanduser("~"), os.W_OK) and not os.path.isdir(home):
        home = os.path.join("/tmp", ".keras")
    return os.path.join(home, "models")


def wanted_weights_file(backbone: Backbone, image_size: Optional[int] = None):
    """(file name, URL) that tf_keras would fetch for ImageNet weights, without fetching."""
    from tfx_transfer.modules import keras_compat  # noqa: F401
    from tf_keras.src.utils import data_utils

    real = data_utils.get_file

    def record(fname=None, origin=None, *args, **kwargs):
        raise _WantedFile(fname or os.path.basename(origin), origin)

    data_utils.get_file = record
    try:
        backbone.build(image_size, weights="imagenet")
    except _WantedFile as wanted:
        return wanted.fname, wanted.origin
    finally:
        data_utils.get_file = real
    raise RuntimeError(f"{backbone.name} built without asking for a weights file")


def shared_weights_dir() -> str:
    """../shared/weights beside this checkout: the air-gapped development machines'
    copy of the ImageNet files (the folder `make demo` passes a file from)."""
    checkout = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    return os.path.join(os.path.dirname(checkout), "shared", "weights")


def _fetch_failure(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text.split(" -- ")[-1][:120]  # Keras: "URL fetch failure on URL: None -- [Errno -3] ..."


def resolve_weights(name: str, image_size: Optional[int], weights: Optional[str]) -> Optional[str]:
    """What to pass as `weights=`: None, 'imagenet' or a file path.

    ImageNet weights come from Keras' cache (~/.keras/models) when the file is
    there, else from the image's baked-in folder ($TFX_TRANSFER_WEIGHTS_DIR),
    else from ../shared/weights beside the checkout, else from the network. MobileNet files are named per input size but hold the same
    weights at every size, so the 224 file stands in for a missing
    size-specific one. When nothing can be had, this fails before any work
    starts, naming the file Keras wanted and where to put it.
    """
    if weights is None or weights.lower() == "none":
        return None
    if weights.lower() != "imagenet":
        if weights.startswith(("gs://", "s3://")) or os.path.isfile(weights):
            return weights
        raise WeightsUnavailable(f"weights file {weights} does not exist")
    backbone = get(name)
    size = image_size or backbone.default_size
    fname, origin = wanted_weights_file(backbone, size)
    cache = keras_cache_dir()
    candidates = [fname]
    if f"_{size}_" in fname and size != 224:
        candidates.append(fname.replace(f"_{size}_", "_224_"))
    baked = os.environ.get(contract.WEIGHTS_DIR_ENV)  # weight files inside the image
    for folder in [cache] + ([baked] if baked else []) + [shared_weights_dir()]:
        for candidate in candidates:
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return "imagenet" if folder == cache and candidate == fname else path
    try:
        from tfx_transfer.modules import keras_compat  # noqa: F401
        from tf_keras.src.utils import data_utils

        data_utils.get_file(fname, origin, cache_subdir="models")
        return "imagenet"
    except Exception as e:  # noqa: BLE001 -- any fetch failure means "offline"
        raise WeightsUnavailable(
            f"ImageNet weights for {name} at {size}px are not in Keras' cache and could not "
            f"be downloaded ({_fetch_failure(e)}).\n"
            f"  Keras wanted the file: {fname}\n"
            f"  from: {origin}\n"
            f"  Put it at: {os.path.join(cache, fname)}"
            + (f"\n  (or {candidates[1]} there: the same weights serve every input size)"
               if len(candidates) > 1 else "") + "\n"
            f"  or pass that file with --weights PATH, or train from scratch with --weights none."
        ) from None
