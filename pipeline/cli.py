"""tfx-transfer command line.

    tfx-transfer run --data DIR [--config FILE] [--backbone NAME] [--mode MODE] ...
    tfx-transfer backbones
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
from typing import List, Optional

from modules import keras_compat  # noqa: F401


def _add_run_flags(p: argparse.ArgumentParser):
    from pipeline import run_command

    run_command.add_flags(p)


def _config_from(args):
    from pipeline import run_command

    return run_command.config_from(args)


def cmd_run(args) -> int:
    from pipeline import run_command

    return run_command.run(args)


def cmd_backbones(args) -> int:
    from modules import backbones

    rows = [(b.name, b.family, b.default_size, b.preprocessing) for b in backbones.REGISTRY.values()]
    if args.json:
        print(json.dumps([dict(zip(("name", "family", "input_size", "preprocessing"), r))
                          for r in rows], indent=1))
        return 0
    print(f"{'name':20} {'family':14} {'input':>5}  preprocessing")
    for name, family, size, prep in rows:
        print(f"{name:20} {family:14} {size:>5}  {prep}: {backbones.PREPROCESS_MODES[prep]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfx-transfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the pipeline locally",
                       description="Run the pipeline locally: progress here, full log in "
                                   "<output>/logs/run.log, result at the end.")
    _add_run_flags(p)
    from pipeline import run_command

    run_command.add_output_flags(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("backbones", help="list the registered backbones")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_backbones)
    # Commands of the other parts of the project, present as they land.
    for name in ("pipeline.compare", "serving.cli", "pipeline.kubeflow"):
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tfx-transfer")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


# Errors that mean bad input (data, config, weights): one line and exit 2, no
# traceback. Looked up among the modules already imported, so that `predict` and
# `serve` do not pay for importing TFX just to name ImageDataError.
_USER_ERRORS = (("pipeline.config", "ConfigError"), ("modules.backbones", "WeightsUnavailable"),
                ("components.image_example_gen", "ImageDataError"),
                ("pipeline.data_sources", "DataSourceError"))


def _user_errors() -> tuple:
    return tuple(getattr(sys.modules[m], n) for m, n in _USER_ERRORS if m in sys.modules)


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        from pipeline import run_command

        return run_command.interrupted()
    except Exception as e:  # noqa: BLE001 -- re-raised unless it is a user error
        if not isinstance(e, _user_errors()):
            raise
        print(f"tfx-transfer: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
