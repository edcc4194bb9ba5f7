"""The one typed configuration object of a run.

A run is described by a YAML file and/or command-line flags; both end up in
:class:`RunConfig`. Every value is checked before any component runs, and an
error names the field, so a typo costs seconds instead of a failed Trainer an
hour into a run.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, List, Mapping, Optional

MODES = ("linear_probe", "fine_tune", "lp_ft")
RUNNERS = ("local", "beam")
OPTIMIZERS = ("adamw", "adam", "sgd")
POOLINGS = ("avg", "max")
AUGMENTATIONS = ("flip", "crop", "rotation", "zoom")
# auto: look at the folder; folders: DIR/train + DIR/test; hash: one DIR/<class> folder.
DATA_LAYOUTS = ("auto", "folders", "hash")


# Kubernetes resource quantities (as used here: no exponents) and image digests.
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


@dataclasses.dataclass
class RunConfig:
    # --- data -------------------------------------------------------------
    # A folder DIR/<class>/<image> (or DIR/{train,test|eval}/<class>/<image>),
    # a folder or glob of TFRecord files of tf.Examples, or tfds:NAME.
    data: str = ""
    eval_fraction: float = 0.2  # used only when the data has no train/test folders
    # A gs:// root or a Kubeflow runtime parameter cannot be listed when the
    # pipeline is built: say the layout instead of "auto" there.
    data_layout: str = "auto"
    max_bad_fraction: float = 0.01  # more undecodable images than this fails ExampleGen
    class_groups: Optional[Dict[str, str]] = None  # class -> group, adds a slice feature
    # Image budget (modules/image_budget.py), checked on headers before decoding:
    # images over it are skipped and reported like undecodable ones.
    max_image_pixels: int = 4096 * 4096  # per frame
    max_image_frames: int = 256
    max_image_mb: int = 256  # decoded size of all frames

    # --- model ------------------------------------------------------------
    backbone: str = "MobileNetV2"
    weights: str = "imagenet"  # imagenet | none | path to a .h5 weights file
    image_size: Optional[int] = None  # None: the backbone's default input size
    mode: str = "linear_probe"
    pooling: str = "avg"
    dropout: float = 0.2
    hidden_units: int = 0  # 0: the head is pooling -> dropout -> dense

    # --- training ---------------------------------------------------------
    epochs: int = 10  # probe epochs (linear_probe, and the probe phase of lp_ft)
    fine_tune_epochs: int = 2  # fine_tune, and the fine-tuning phase of lp_ft
    batch_size: int = 64
    learning_rate: float = 1e-3  # head
    fine_tune_learning_rate: float = 1e-4  # unfrozen backbone blocks
    unfreeze_groups: int = 2  # top N layer groups (blocks) unfrozen when fine-tuning
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0
    cosine_decay: bool = True
    clipnorm: Optional[float] = None
    augment: List[str] = dataclasses.field(default_factory=list)
    early_stopping_patience: int = 0  # 0: off
    cache_features: bool = True  # linear probe trains on backbone features computed once
    seed: int = 42

    # --- evaluation / blessing -------------------------------------------
    min_accuracy: float = 0.0  # value threshold for blessing
    max_accuracy_drop: float = 0.01  # change threshold against the last blessed model
    # Resolve the last blessed model as the Evaluator's baseline. Kubeflow
    # Pipelines' open-source backend cannot run Resolver nodes.
    baseline: bool = True

    # --- projector (EmbeddingProjector component) -------------------------
    projector: bool = True
    projector_samples: int = 2000

    # --- outputs and runners ----------------------------------------------
    output: str = "runs/default"
    serving_dir: Optional[str] = None  # default: <output>/serving
    pipeline_name: str = "tfx-transfer"
    model_name: str = "classifier"
    runner: str = "local"
    enable_cache: bool = True
    beam_args: List[str] = dataclasses.field(default_factory=list)

    # --- Kubeflow ------------------------------------------------------------
    image: str = ""  # container image of every component (and of TFJob workers)
    namespace: str = "kubeflow"  # where TFJobs are created
    tfjob_workers: int = 0  # >0: the Trainer runs as a TFJob of that many workers
    tfjob_gpus_per_worker: int = 0
    tfjob_service_account: str = ""  # of the worker pods (storage access); "": namespace default
    # Requests and limits of every worker pod (Kubernetes quantities), and the
    # size limit of its /tmp emptyDir (checkpoints).
    tfjob_cpu: str = "4"
    tfjob_memory: str = "16Gi"
    tfjob_tmp_size: str = "20Gi"

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------
    @property
    def resolved_serving_dir(self) -> str:
        return self.serving_dir or os.path.join(self.output, "serving")

    def validate(self) -> "RunConfig":
        def fail(field, msg):
            raise ConfigError(f"config field '{field}': {msg}")

        def check_type(field, types):
            value = getattr(self, field)
            # bool is an int in Python; reject it where a number is wanted.
            if isinstance(value, bool) and bool not in types:
                fail(field, f"expected {types[0].__name__}, got {value!r}")
            if not isinstance(value, types):
                fail(field, f"expected {types[0].__name__}, got {type(value).__name__} {value!r}")

        ints = ("epochs", "fine_tune_epochs", "batch_size", "unfreeze_groups",
                "early_stopping_patience", "seed", "projector_samples", "hidden_units",
                "tfjob_workers", "tfjob_gpus_per_worker", "max_image_pixels", "max_image_frames",
                "max_image_mb")
        floats = ("eval_fraction", "max_bad_fraction", "dropout", "learning_rate",
                  "fine_tune_learning_rate", "weight_decay", "momentum",
                  "label_smoothing", "warmup_epochs", "min_accuracy", "max_accuracy_drop")
        strs = ("data", "backbone", "weights", "mode", "pooling", "optimizer", "output",
                "pipeline_name", "model_name", "runner", "data_layout", "image", "namespace",
                "tfjob_service_account", "tfjob_cpu", "tfjob_memory", "tfjob_tmp_size")
        bools = ("cosine_decay", "cache_features", "projector", "enable_cache", "baseline")
        for f in ints:
            check_type(f, (int,))
        for f in floats:
            if isinstance(getattr(self, f), int) and not isinstance(getattr(self, f), bool):
                setattr(self, f, float(getattr(self, f)))
            check_type(f, (float,))
        for f in strs:
            check_type(f, (str,))
        for f in bools:
            check_type(f, (bool,))

        if self.mode not in MODES:
            fail("mode", f"{self.mode!r} is not one of {', '.join(MODES)}")
        if self.runner not in RUNNERS:
            fail("runner", f"{self.runner!r} is not one of {', '.join(RUNNERS)}")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", f"{self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.pooling not in POOLINGS:
            fail("pooling", f"{self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.data_layout not in DATA_LAYOUTS:
            fail("data_layout", f"{self.data_layout!r} is not one of {', '.join(DATA_LAYOUTS)}")
        for f in ("tfjob_workers", "tfjob_gpus_per_worker"):
            if getattr(self, f) < 0:
                fail(f, f"must be >= 0, got {getattr(self, f)}")
        if self.tfjob_workers and not self.image:
            fail("image", "a TFJob Trainer (tfjob_workers > 0) needs the container image")
        if "@" in self.image and not _DIGEST.fullmatch(self.image.partition("@")[2]):
            fail("image", f"{self.image!r}: a pinned image is NAME@sha256:<64 hex digits>")
        for f in ("tfjob_cpu", "tfjob_memory", "tfjob_tmp_size"):
            if not _QUANTITY.fullmatch(getattr(self, f)):
                fail(f, f"{getattr(self, f)!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
        from modules import backbones  # light import: no TensorFlow

        if self.backbone not in backbones.names():
            close = backbones.closest(self.backbone)
            hint = f" (did you mean {close}?)" if close else ""
            fail("backbone", f"unknown backbone {self.backbone!r}{hint}; "
                             "`tfx-transfer backbones` lists them")
        if self.image_size is not None:
            if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
                fail("image_size", f"expected an integer, got {self.image_size!r}")
            lo = backbones.get(self.backbone).min_size
            if not lo <= self.image_size <= 1024:
                fail("image_size", f"{self.image_size} is outside [{lo}, 1024] for {self.backbone}")
        for f in ("epochs", "batch_size", "projector_samples", "max_image_pixels",
                  "max_image_frames", "max_image_mb"):
            if getattr(self, f) < 1:
                fail(f, f"must be >= 1, got {getattr(self, f)}")
        for f in ("fine_tune_epochs", "unfreeze_groups", "early_stopping_patience",
                  "hidden_units", "warmup_epochs", "weight_decay", "label_smoothing"):
            if getattr(self, f) < 0:
                fail(f, f"must be >= 0, got {getattr(self, f)}")
        if self.mode in ("fine_tune", "lp_ft") and self.fine_tune_epochs < 1:
            fail("fine_tune_epochs", f"mode {self.mode} needs at least 1 fine-tuning epoch")
        if self.mode in ("fine_tune", "lp_ft") and self.unfreeze_groups < 1:
            fail("unfreeze_groups", f"mode {self.mode} needs at least 1 unfrozen group")
        for f in ("learning_rate", "fine_tune_learning_rate"):
            if not 0 < getattr(self, f) < 10:
                fail(f, f"must be in (0, 10), got {getattr(self, f)}")
        for f in ("eval_fraction",):
            if not 0 < getattr(self, f) < 1:
                fail(f, f"must be in (0, 1), got {getattr(self, f)}")
        for f in ("max_bad_fraction", "dropout", "min_accuracy", "max_accuracy_drop",
                  "label_smoothing", "momentum"):
            if not 0 <= getattr(self, f) <= 1:
                fail(f, f"must be in [0, 1], got {getattr(self, f)}")
        if self.dropout >= 1:
            fail("dropout", "must be < 1")
        if self.clipnorm is not None and (isinstance(self.clipnorm, bool) or
                                          not isinstance(self.clipnorm, (int, float)) or
                                          self.clipnorm <= 0):
            fail("clipnorm", f"must be a positive number or null, got {self.clipnorm!r}")
        if not isinstance(self.augment, list) or any(a not in AUGMENTATIONS for a in self.augment):
            fail("augment", f"must be a list drawn from {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if not isinstance(self.beam_args, list) or not all(isinstance(a, str) for a in self.beam_args):
            fail("beam_args", f"must be a list of strings, got {self.beam_args!r}")
        if self.class_groups is not None:
            if not isinstance(self.class_groups, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in self.class_groups.items()):
                fail("class_groups", "must be a mapping of class name -> group name")
        w = self.weights
        if w.lower() not in ("imagenet", "none") and not w.startswith(("gs://", "s3://")) \
                and not os.path.isfile(w):
            fail("weights", f"{w!r} is neither 'imagenet', 'none' nor an existing weights file")
        if self.serving_dir is not None and not isinstance(self.serving_dir, str):
            fail("serving_dir", f"expected a path, got {self.serving_dir!r}")
        return self

    # ------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            import difflib

            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            raise ConfigError(f"unknown config field(s): {', '.join(hints)}")
        return cls(**dict(values))

    @classmethod
    def load(cls, path: Optional[str] = None, **overrides) -> "RunConfig":
        """Reads a YAML file (optional) and applies non-None overrides on top."""
        values: Dict[str, Any] = {}
        if path:
            import yaml

            try:
                with open(path) as f:
                    loaded = yaml.safe_load(f) or {}
            except OSError as e:
                raise ConfigError(f"cannot read config file {path}: {e}") from e
            except yaml.YAMLError as e:
                raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
            if not isinstance(loaded, dict):
                raise ConfigError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
            values.update(loaded)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def image_budget(self) -> Dict[str, int]:
        """modules.image_budget.ImageBudget fields."""
        return {"max_pixels": self.max_image_pixels, "max_frames": self.max_image_frames,
                "max_decoded_bytes": self.max_image_mb << 20}

    def trainer_config(self) -> Dict[str, Any]:
        """The part of the config the Trainer/Transform modules see (custom_config)."""
        keys = ("backbone", "weights", "image_size", "mode", "pooling", "dropout",
                "hidden_units", "epochs", "fine_tune_epochs", "batch_size", "learning_rate",
                "fine_tune_learning_rate", "unfreeze_groups", "optimizer", "weight_decay",
                "momentum", "label_smoothing", "warmup_epochs", "cosine_decay", "clipnorm",
                "augment", "early_stopping_patience", "cache_features", "seed")
        return {k: getattr(self, k) for k in keys}
