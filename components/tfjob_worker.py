"""One training worker: the Trainer's run_fn on serialized executor inputs.

    python -m tfx_transfer.components.tfjob_worker --fn-args gs://.../fn_args.json

This is what each TFJob worker runs (components/tfjob_trainer.py writes the
file), and what the multi-worker tests start on localhost. The file holds the
Trainer executor's inputs, outputs and exec properties, not FnArgs itself:
FnArgs carries a DataAccessor of functions, so every worker rebuilds it with
the Trainer's own GenericExecutor code and gets exactly what a single-process
Trainer would pass to run_fn. TF_CONFIG (set by the Training Operator) says
which worker this is; run_fn picks the strategy from it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional

from tfx_transfer.modules import keras_compat  # noqa: F401

log = logging.getLogger("tfx_transfer.worker")


def dump(input_dict, output_dict, exec_properties: Dict[str, Any], path: str) -> None:
    from tfx.dsl.io import fileio
    from tfx.types import artifact_utils

    payload = {"inputs": artifact_utils.jsonify_artifact_dict(input_dict),
               "outputs": artifact_utils.jsonify_artifact_dict(output_dict),
               "exec_properties": exec_properties}
    fileio.makedirs(os.path.dirname(path))
    with fileio.open(path, "w") as f:
        f.write(json.dumps(payload, indent=1, sort_keys=True))


def load(path: str):
    from tfx.dsl.io import fileio
    from tfx.types import artifact_utils

    with fileio.open(path, "r") as f:
        payload = json.loads(f.read())
    return (artifact_utils.parse_artifact_dict(payload["inputs"]),
            artifact_utils.parse_artifact_dict(payload["outputs"]),
            payload["exec_properties"])


def fn_args_from(input_dict, output_dict, exec_properties):
    from tfx.components.trainer.executor import GenericExecutor

    return GenericExecutor()._GetFnArgs(input_dict, output_dict, exec_properties)


def run(path: str) -> None:
    from tfx.components.util import udf_utils
    from tfx.dsl.io import fileio

    from tfx_transfer.modules import trainer

    input_dict, output_dict, exec_properties = load(path)
    fn_args = fn_args_from(input_dict, output_dict, exec_properties)
    run_fn = udf_utils.get_fn(exec_properties, "run_fn")
    run_fn(fn_args)
    # The Trainer checks this after run_fn too, but only the chief writes a model.
    if trainer.is_chief() and not fileio.exists(fn_args.serving_model_dir):
        raise RuntimeError(f"run_fn wrote no model to {fn_args.serving_model_dir}")


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m tfx_transfer.components.tfjob_worker")
    parser.add_argument("--fn-args", required=True, dest="fn_args",
                        help="JSON written by tfx_transfer.components.tfjob_worker.dump (local path or gs://)")
    args = parser.parse_args(argv)
    run(args.fn_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
