"""The one typed configuration object of a run, in sections.

    data        where the images are and how they split
    model       backbone, weights, input size, head       (modules/config.py)
    training    mode, epochs, optimiser, unfreezing        (modules/config.py)
    evaluation  blessing thresholds, baseline, projector
    deploy      output, serving, runners, Kubeflow and TFJob settings

A YAML file may be written in sections (`model: {backbone: ResNet50}`) or
flat (`backbone: ResNet50`): every field name is unique across sections.
Flags and `--set` override it by field name. Each section validates its
fields from their annotations when it is built, so a typo costs seconds
and the error names the field.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple

from tfx_transfer.modules.config import (AUGMENTATIONS, MODES, ConfigError, ModelConfig,  # noqa: F401
                            ModuleConfig, Section, TrainingConfig, fail, unknown_fields_message,
                            value)

Runner = Literal["local", "beam"]
# auto: look at the folder; folders: DIR/train + DIR/test; hash: one DIR/<class> folder.
DataLayout = Literal["auto", "folders", "hash"]
RUNNERS: Tuple[str, ...] = ("local", "beam")
DATA_LAYOUTS: Tuple[str, ...] = ("auto", "folders", "hash")
# Kubernetes resource quantities (as used here: no exponents) and image digests.
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

__all__ = ["ConfigError", "RunConfig", "DataConfig", "ModelConfig", "TrainingConfig",
           "EvaluationConfig", "DeployConfig", "ModuleConfig"]


@dataclasses.dataclass
class DataConfig(Section):
    # A folder DIR/<class>/<image> (or DIR/{train,test|eval}/<class>/<image>),
    # a folder or glob of TFRecord files of tf.Examples, or tfds:NAME.
    data: str = value("", doc="image folder, TFRecord files, or tfds:NAME")
    eval_fraction: float = value(0.2, lo=0, hi=1, lo_open=True, hi_open=True,
                                 doc="share of eval images when the data has no train/test folders")
    # A gs:// root or a Kubeflow runtime parameter cannot be listed when the
    # pipeline is built: say the layout instead of "auto" there.
    data_layout: DataLayout = value("auto", doc="auto | folders (train/ + test/) | hash")
    max_bad_fraction: float = value(0.01, lo=0, hi=1,
                                    doc="more undecodable images than this fails ExampleGen")
    class_groups: Optional[Dict[str, str]] = value(None, doc="class -> group: adds a slice feature")
    # Image budget (modules/image_budget.py), checked on headers before decoding:
    # images over it are skipped and reported like undecodable ones.
    max_image_pixels: int = value(4096 * 4096, lo=1, doc="largest image, in pixels per frame")
    max_image_frames: int = value(256, lo=1, doc="most frames of an animated image")
    max_image_mb: int = value(256, lo=1, doc="largest decoded size of all frames, in MiB")

    def image_budget(self) -> Dict[str, int]:
        """tfx_transfer.modules.image_budget.ImageBudget fields."""
        return {"max_pixels": self.max_image_pixels, "max_frames": self.max_image_frames,
                "max_decoded_bytes": self.max_image_mb << 20}


@dataclasses.dataclass
class EvaluationConfig(Section):
    min_accuracy: float = value(0.0, lo=0, hi=1, doc="accuracy a model needs to be blessed")
    # Bless only above always predicting the most frequent class (pipeline/blessing.py).
    bless_over_majority: bool = value(True, doc="also require beating the majority class")
    max_accuracy_drop: float = value(0.01, lo=0, hi=1,
                                     doc="largest accuracy drop against the last blessed model")
    # Resolve the last blessed model as the Evaluator's baseline. Kubeflow
    # Pipelines' open-source backend cannot run Resolver nodes.
    baseline: bool = value(True, doc="compare with the last blessed model")
    projector: bool = value(True, doc="run the EmbeddingProjector component")
    projector_samples: int = value(2000, lo=1, doc="eval examples the projector embeds")


@dataclasses.dataclass
class DeployConfig(Section):
    output: str = value("runs/default", doc="run folder: pipeline root, MLMD, summary.json")
    serving_dir: Optional[str] = value(None, doc="where the Pusher writes (default: OUTPUT/serving)")
    pipeline_name: str = value("tfx-transfer")
    model_name: str = value("classifier", doc="served model name: SERVING_DIR/MODEL_NAME/VERSION")
    runner: Runner = value("local", doc="local (LocalDagRunner) | beam (BeamDagRunner)")
    enable_cache: bool = value(True, doc="reuse finished components of earlier runs")
    beam_args: List[str] = value(factory=list, doc="Beam pipeline arguments")
    # --- Kubeflow ---------------------------------------------------------
    image: str = value("", doc="container image of every component and TFJob worker")
    namespace: str = value("kubeflow", doc="namespace of the TFJobs")
    tfjob_workers: int = value(0, lo=0, doc=">0: the Trainer runs as a TFJob of that many workers")
    tfjob_gpus_per_worker: int = value(0, lo=0)
    tfjob_service_account: str = value("", doc="service account of the worker pods")
    # Requests (= limits) of every worker pod, and the size limit of its /tmp
    # emptyDir (checkpoints), as Kubernetes quantities.
    tfjob_cpu: str = value("4", doc="CPU of each TFJob worker pod")
    tfjob_memory: str = value("16Gi", doc="memory of each TFJob worker pod")
    tfjob_tmp_size: str = value("20Gi", doc="size limit of each worker's /tmp")

    def check(self):
        if self.tfjob_workers and not self.image:
            fail("image", "a TFJob Trainer (tfjob_workers > 0) needs the container image")
        if "@" in self.image and not _DIGEST.fullmatch(self.image.partition("@")[2]):
            fail("image", f"{self.image!r}: a pinned image is NAME@sha256:<64 hex digits>")
        for f in ("tfjob_cpu", "tfjob_memory", "tfjob_tmp_size"):
            if not _QUANTITY.fullmatch(getattr(self, f)):
                fail(f, f"{getattr(self, f)!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")

    @property
    def resolved_serving_dir(self) -> str:
        return self.serving_dir or os.path.join(self.output, "serving")


SECTIONS: Dict[str, type] = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig,
                             "evaluation": EvaluationConfig, "deploy": DeployConfig}
# field name -> section name; field names are unique across sections.
FIELD_SECTION: Dict[str, str] = {}
for _section, _cls in SECTIONS.items():
    for _name in _cls.field_names():
        assert _name not in FIELD_SECTION, f"config field {_name} is in two sections"
        FIELD_SECTION[_name] = _section


@dataclasses.dataclass
class RunConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    deploy: DeployConfig = dataclasses.field(default_factory=DeployConfig)

    # ------------------------------------------------------------------
    @property
    def module(self) -> ModuleConfig:
        """The part the Transform, the Trainer and the projector see (custom_config)."""
        return ModuleConfig(model=self.model, training=self.training)

    def flat(self) -> Dict[str, Any]:
        """Every field by its name (summaries, tables)."""
        return {k: v for s in SECTIONS for k, v in getattr(self, s).to_dict().items()}

    def to_dict(self) -> Dict[str, Any]:
        return {s: getattr(self, s).to_dict() for s in SECTIONS}

    def replace(self, **changes) -> "RunConfig":
        """A copy with fields changed by name (sections validate again)."""
        return RunConfig.from_dict({**self.flat(), **changes})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        """From a sectioned mapping, a flat one, or a mix of both."""
        by_section: Dict[str, Dict[str, Any]] = {s: {} for s in SECTIONS}
        unknown = []
        for key, v in values.items():
            if key in SECTIONS and isinstance(v, Mapping):
                for k, x in v.items():
                    if FIELD_SECTION.get(k) != key:
                        unknown.append(f"{key}.{k}" if k not in FIELD_SECTION else k)
                    by_section[key][k] = x
            elif key in FIELD_SECTION:
                by_section[FIELD_SECTION[key]][key] = v
            else:
                unknown.append(key)
        if unknown:
            raise ConfigError(unknown_fields_message(unknown, list(FIELD_SECTION)))
        return cls(**{s: SECTIONS[s].from_dict(by_section[s]) for s in SECTIONS})

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
                # PyYAML's message spans four lines; where and what fit in one.
                mark = getattr(e, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = getattr(e, "problem", None) or str(e).splitlines()[0]
                raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from e
            if not isinstance(loaded, dict):
                raise ConfigError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
            for key, v in loaded.items():
                if key in SECTIONS and isinstance(v, Mapping):
                    values.update(v)
                else:
                    values[key] = v
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def require_data(self) -> "RunConfig":
        if not self.data.data:
            raise ConfigError("config field 'data': no data given (--data DIR or data: in --config)")
        return self

