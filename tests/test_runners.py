"""The same pipeline on the BeamDagRunner (the LocalDagRunner run is the
default suite's tiny_run)."""
import os

import pytest

from conftest import tiny_config


@pytest.mark.slow
@pytest.mark.e2e
def test_beam_dag_runner_runs_the_pipeline(tmp_path):
    from tfx_transfer.pipeline.runners import local as runners

    config = tiny_config(tmp_path, runner="beam", epochs=1, projector=False)
    summary = runners.run(config)
    assert summary["pushed_model_dir"] and os.path.isdir(summary["pushed_model_dir"])
    assert summary["train_examples"] == 300 and summary["eval_examples"] == 100
    assert 0 <= summary["metrics"]["accuracy"] <= 1


def test_default_beam_args_avoid_the_prism_download():
    from tfx_transfer.pipeline.runners import local as runners

    args = runners.beam_args(tiny_config("/tmp/x"))
    assert "--runner=FnApiRunner" in args
    assert runners.beam_args(tiny_config("/tmp/x", beam_args=["--runner=DataflowRunner"])) == \
        ["--runner=DataflowRunner"]


def test_in_process_beam_runners_skip_the_tfx_sdist():
    # TFX builds an sdist of itself for remote Beam workers unless a dependency
    # flag is present; in-process runners get one, remote runners keep staging.
    from tfx_transfer.pipeline.runners import local as runners

    assert runners.NO_STAGING in runners.local_beam_args(tiny_config("/tmp/x"))
    for args in (["--runner=DataflowRunner"], ["--setup_file=./setup.py"]):
        assert runners.NO_STAGING not in runners.local_beam_args(
            tiny_config("/tmp/x", beam_args=args))
