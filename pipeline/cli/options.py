"""Flags shared by the commands that build a pipeline (run, compare, compile)."""
from __future__ import annotations

import argparse

from pipeline.config import RunConfig

# flag dest -> config field; every one is also settable with --set FIELD=VALUE.
RUN_FLAGS = ("data", "backbone", "mode", "image_size", "epochs", "fine_tune_epochs",
             "batch_size", "weights", "output", "serving_dir", "runner", "projector",
             "enable_cache")


def add_run_flags(p: argparse.ArgumentParser):
    p.add_argument("--config", help="YAML run config; flags override its values")
    p.add_argument("--data", help="image folder, TFRecord files, or tfds:NAME")
    p.add_argument("--backbone")
    p.add_argument("--mode", choices=["linear_probe", "fine_tune", "lp_ft"])
    p.add_argument("--image-size", type=int, dest="image_size")
    p.add_argument("--epochs", type=int)
    p.add_argument("--fine-tune-epochs", type=int, dest="fine_tune_epochs")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--weights", help="imagenet | none | PATH to a weights file")
    p.add_argument("--output", help="run directory (pipeline root, MLMD, summary.json)")
    p.add_argument("--serving-dir", dest="serving_dir")
    p.add_argument("--runner", choices=["local", "beam"])
    p.add_argument("--no-projector", dest="projector", action="store_false", default=None)
    p.add_argument("--no-cache", dest="enable_cache", action="store_false", default=None)


def config_from_args(args, **extra) -> RunConfig:
    """The run config of --config, the run flags (and extra fields, e.g. compile's), checked."""
    overrides = {k: getattr(args, k, None) for k in RUN_FLAGS}
    overrides.update(extra)
    return RunConfig.load(getattr(args, "config", None), **overrides).require_data()
