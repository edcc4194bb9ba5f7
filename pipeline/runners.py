"""Local runners: LocalDagRunner and BeamDagRunner over MLMD on SQLite."""
from __future__ import annotations

import logging
import os
import resource
import time
from typing import List

from tfx import v1 as tfx

from pipeline.config import RunConfig
from pipeline.pipeline import create_pipeline

log = logging.getLogger("tfx_transfer")

# Beam 2.74's DirectRunner first tries to download a Prism binary, which fails
# offline; the in-process FnApiRunner is what DirectRunner ran before anyway.
DEFAULT_BEAM_ARGS = ["--runner=FnApiRunner", "--direct_num_workers=1"]


def beam_args(config: RunConfig) -> List[str]:
    args = list(config.beam_args)
    if not any(a.startswith("--runner") for a in args):
        args = DEFAULT_BEAM_ARGS + args
    return args


def metadata_path(config: RunConfig) -> str:
    return os.path.join(config.output, "metadata.sqlite")


def pipeline_root(config: RunConfig) -> str:
    return os.path.join(os.path.abspath(config.output), "pipeline_root")


def build(config: RunConfig):
    os.makedirs(config.output, exist_ok=True)
    return create_pipeline(
        config,
        pipeline_root=pipeline_root(config),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            metadata_path(config)),
        beam_pipeline_args=beam_args(config))


def run(config: RunConfig) -> dict:
    """Runs the pipeline with the configured local runner; returns the summary.

    One run per output at a time; a killed run's leftovers are cleaned first."""
    from pipeline import run_lock

    with run_lock.hold(config.output) as stale:
        run_lock.recover(pipeline_root(config), metadata_path(config),
                         os.path.join(config.resolved_serving_dir, config.model_name), stale)
        return _run(config)


def _run(config: RunConfig) -> dict:
    from pipeline import summary

    pipeline = build(config)
    if config.runner == "local":
        runner = tfx.orchestration.LocalDagRunner()
    else:
        # Not exported under tfx.v1 in 1.16; runs each component as a Beam stage.
        from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

        runner = BeamDagRunner()
    log.info("running %s with %s: %d components, output %s", config.pipeline_name,
             type(runner).__name__, len(pipeline.components), config.output)
    start = time.time()
    runner.run(pipeline)
    wall = time.time() - start
    peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    result = summary.write_summary(config, wall_s=wall, peak_rss_mb=peak_mb)
    return result
