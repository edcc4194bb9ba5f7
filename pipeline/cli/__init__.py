"""tfx-transfer command line: the entry layer over the pipeline, its runners and serving.

    tfx-transfer run --data DIR [--config FILE] [--backbone NAME] [--mode MODE] ...
    tfx-transfer compare | compile | submit | serve | predict | backbones

Each command module imports nothing heavy at its top, so a bad flag or config
is rejected before TensorFlow or TFX load.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from tfx_transfer.modules import keras_compat  # noqa: F401
from tfx_transfer.pipeline.cli import compare, kubeflow, run, serving

# The command table: each module adds its commands (run, backbones, compare,
# compile, submit, serve, predict) to the parser.
COMMAND_MODULES = (run, compare, kubeflow, serving)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfx-transfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
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
_USER_ERRORS = (("tfx_transfer.modules.config", "ConfigError"), ("tfx_transfer.modules.backbones", "WeightsUnavailable"),
                ("tfx_transfer.components.image_example_gen", "ImageDataError"),
                ("tfx_transfer.pipeline.data_sources", "DataSourceError"), ("tfx_transfer.pipeline.run_lock", "RunLocked"))


def _user_errors() -> tuple:
    return tuple(getattr(sys.modules[m], n) for m, n in _USER_ERRORS if m in sys.modules)


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return run.interrupted()
    except Exception as e:  # noqa: BLE001 -- re-raised unless it is a user error
        if not isinstance(e, _user_errors()):
            raise
        print(f"tfx-transfer: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
