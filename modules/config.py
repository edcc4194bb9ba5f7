"""Typed config sections, validated from their annotations.

A section is a dataclass. Its annotations say what a value may be (int, float,
bool, str, Optional[...], List[...], Dict[str, str], Literal[...] for choices)
and `value(...)` adds the range; `validate()` checks every field from that, so
a new field needs no checking code of its own. Errors name the field.

The model and training sections live here, beside the module files, because
they are what crosses the TFX boundary: the pipeline puts
`ModuleConfig.to_custom_config()` into the Transform's and Trainer's
custom_config, and preprocessing_fn, run_fn and the projector parse it back
with `ModuleConfig.from_custom_config()`. Defaults exist here only.

No TensorFlow import: the CLI validates a config before anything heavy loads.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Type, TypeVar

Mode = Literal["linear_probe", "fine_tune", "lp_ft"]
Optimizer = Literal["adamw", "adam", "sgd"]
Pooling = Literal["avg", "max"]
Augmentation = Literal["flip", "crop", "rotation", "zoom"]
ProbeSolver = Literal["lbfgs", "sgd"]
MODES: Tuple[str, ...] = typing.get_args(Mode)
AUGMENTATIONS: Tuple[str, ...] = typing.get_args(Augmentation)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def value(default=dataclasses.MISSING, *, lo=None, hi=None, lo_open=False, hi_open=False,
          factory=dataclasses.MISSING, doc: str = ""):
    """A field with an optional range [lo, hi] (open ends with lo_open / hi_open) and a help text."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "doc": doc}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fail(field: str, message: str):
    raise ConfigError(f"config field '{field}': {message}")


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _check(name: str, v: Any, tp) -> Any:
    """v checked (and int -> float widened) against annotation tp."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if v is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(name, v, inner[0])
    if origin is Literal:
        if v not in args:
            fail(name, f"{v!r} is not one of {', '.join(map(str, args))}")
        return v
    if origin in (list, List):
        if not isinstance(v, list):
            fail(name, f"expected a list, got {v!r}")
        try:
            return [_check(name, x, args[0]) for x in v]
        except ConfigError:
            fail(name, f"must be a list of {_type_name(args[0])}, got {v!r}")
    if origin in (dict, Dict):
        if not isinstance(v, dict):
            fail(name, f"expected a mapping, got {v!r}")
        try:
            return {_check(name, k, args[0]): _check(name, x, args[1]) for k, x in v.items()}
        except ConfigError:
            fail(name, f"must be a mapping of {_type_name(args[0])} -> {_type_name(args[1])}, "
                       f"got {v!r}")
    if tp is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    # bool is an int in Python: reject it where a number is wanted.
    if not isinstance(v, tp) or (tp is not bool and isinstance(v, bool)):
        fail(name, f"expected {_type_name(tp)}, got {type(v).__name__} {v!r}")
    return v


def _check_range(f: dataclasses.Field, v: Any) -> None:
    m = f.metadata
    if v is None or (m.get("lo") is None and m.get("hi") is None):
        return
    lo, hi = m.get("lo"), m.get("hi")
    below = lo is not None and (v <= lo if m["lo_open"] else v < lo)
    above = hi is not None and (v >= hi if m["hi_open"] else v > hi)
    if below or above:
        if hi is None:
            fail(f.name, f"must be {'>' if m['lo_open'] else '>='} {lo}, got {v}")
        if lo is None:
            fail(f.name, f"must be {'<' if m['hi_open'] else '<='} {hi}, got {v}")
        fail(f.name, f"must be in {'(' if m['lo_open'] else '['}{lo}, {hi}"
                     f"{')' if m['hi_open'] else ']'}, got {v}")


S = TypeVar("S", bound="Section")


class Section:
    """Base of the config sections: validation from annotations, dict round trip."""

    def __post_init__(self):
        self.validate()

    def validate(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            v = _check(f.name, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, v)
            _check_range(f, v)
        self.check()
        return self

    def check(self) -> None:
        """Rules between fields; sections override it."""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: Type[S], values: Mapping[str, Any], where: str = "") -> S:
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(unknown_fields_message(unknown, cls.field_names(), where))
        return cls(**dict(values))


def unknown_fields_message(unknown, known, where: str = "") -> str:
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return f"unknown config field(s){' in ' + where if where else ''}: {', '.join(hints)}"


@dataclasses.dataclass
class ModelConfig(Section):
    backbone: str = value("MobileNetV2", doc="a name of `tfx-transfer backbones`")
    # imagenet: Keras' cache (~/.keras/models) or a download; none: random
    # initialisation; else the path of a weights file (local, gs://, or a path
    # inside the container image on a cluster).
    weights: str = value("imagenet", doc="imagenet | none | path to a .h5 weights file")
    # None asks for the backbone's default input size; validate() resolves it,
    # so every reader sees a number.
    image_size: Optional[int] = value(None, hi=1024, doc="input size in pixels (default: the backbone's)")
    pooling: Pooling = value("avg", doc="global pooling of the backbone's feature map")
    dropout: float = value(0.2, lo=0, hi=1, hi_open=True, doc="dropout before the head's dense layer")
    hidden_units: int = value(0, lo=0, doc="0: the head is pooling -> dropout -> dense")

    def check(self):
        from tfx_transfer.modules import backbones  # the registry: no TensorFlow import

        if self.backbone not in backbones.names():
            close = backbones.closest(self.backbone)
            hint = f" (did you mean {close}?)" if close else ""
            fail("backbone", f"unknown backbone {self.backbone!r}{hint}; "
                             "`tfx-transfer backbones` lists them")
        entry = backbones.get(self.backbone)
        if self.image_size is None:
            object.__setattr__(self, "image_size", entry.default_size)
        if self.image_size < entry.min_size:
            fail("image_size", f"{self.image_size} is outside [{entry.min_size}, 1024] "
                               f"for {self.backbone}")
        if self.weights.lower() in ("imagenet", "none"):
            object.__setattr__(self, "weights", self.weights.lower())
        elif not self.weights:
            fail("weights", "empty; say imagenet, none or the path of a weights file")


@dataclasses.dataclass
class TrainingConfig(Section):
    mode: Mode = value("linear_probe", doc="linear_probe | fine_tune | lp_ft (probe, then fine-tune)")
    epochs: int = value(10, lo=1, doc="probe epochs (linear_probe, and the probe phase of lp_ft)")
    fine_tune_epochs: int = value(2, lo=0, doc="epochs of fine_tune and of lp_ft's second phase")
    batch_size: int = value(64, lo=1, doc="global batch size")
    learning_rate: float = value(1e-3, lo=0, hi=10, lo_open=True, hi_open=True,
                                 doc="learning rate of the head")
    fine_tune_learning_rate: float = value(1e-4, lo=0, hi=10, lo_open=True, hi_open=True,
                                           doc="learning rate of the unfrozen backbone blocks")
    unfreeze_groups: int = value(2, lo=0, doc="top N layer groups (blocks) unfrozen when fine-tuning")
    optimizer: Optimizer = value("adamw")
    weight_decay: float = value(1e-4, lo=0)
    momentum: float = value(0.9, lo=0, hi=1, doc="SGD only")
    label_smoothing: float = value(0.0, lo=0, hi=1)
    warmup_epochs: float = value(0.0, lo=0)
    cosine_decay: bool = value(True)
    clipnorm: Optional[float] = value(None, lo=0, lo_open=True, doc="gradient clipping norm")
    augment: List[Augmentation] = value(factory=list, doc="drawn from flip, crop, rotation, zoom")
    early_stopping_patience: int = value(0, lo=0, doc="0: off")
    cache_features: bool = value(True, doc="the linear probe trains on backbone features computed once")
    # lbfgs: the probe's head (no hidden layer, features cached) solved to
    # convergence (modules/probe_solver.py); sgd: `epochs` of minibatch steps.
    probe_solver: ProbeSolver = value("lbfgs", doc="lbfgs (solved to convergence) | sgd (epochs)")
    probe_l2: Optional[float] = value(None, lo=0, hi=1e4, lo_open=True, hi_open=True,
                                      doc="L2 strength of the lbfgs probe (default: chosen on "
                                          "held-out folds)")
    seed: int = value(42)

    def check(self):
        if self.mode in ("fine_tune", "lp_ft") and self.fine_tune_epochs < 1:
            fail("fine_tune_epochs", f"mode {self.mode} needs at least 1 fine-tuning epoch")
        if self.mode in ("fine_tune", "lp_ft") and self.unfreeze_groups < 1:
            fail("unfreeze_groups", f"mode {self.mode} needs at least 1 unfrozen group")


@dataclasses.dataclass
class ModuleConfig:
    """What the module files (Transform, Trainer) and the projector receive."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)

    def to_custom_config(self) -> Dict[str, Any]:
        return {"model": self.model.to_dict(), "training": self.training.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_custom_config(), sort_keys=True)

    @classmethod
    def from_fields(cls, **values) -> "ModuleConfig":
        """From model and training fields given by name (tests, benchmarks)."""
        model = {k: v for k, v in values.items() if k in ModelConfig.field_names()}
        training = {k: v for k, v in values.items() if k in TrainingConfig.field_names()}
        unknown = sorted(set(values) - set(model) - set(training))
        if unknown:
            raise ConfigError(unknown_fields_message(
                unknown, ModelConfig.field_names() + TrainingConfig.field_names()))
        return cls(model=ModelConfig(**model), training=TrainingConfig(**training))

    @classmethod
    def from_custom_config(cls, custom_config: Optional[Mapping[str, Any]]) -> "ModuleConfig":
        """Parses a Transform's or Trainer's custom_config (a dict, or its JSON)."""
        if isinstance(custom_config, str):
            custom_config = json.loads(custom_config)
        from tfx_transfer.modules.contract import TFJOB_CONFIG_KEY

        custom_config = dict(custom_config or {})
        known = ["model", "training", TFJOB_CONFIG_KEY]
        unknown = sorted(set(custom_config) - set(known))
        if unknown:
            raise ConfigError(unknown_fields_message(unknown, known, "custom_config"))
        return cls(model=ModelConfig.from_dict(custom_config.get("model") or {}, "model"),
                   training=TrainingConfig.from_dict(custom_config.get("training") or {}, "training"))
