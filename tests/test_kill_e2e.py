"""SIGKILL a real local run during the Trainer and during the Pusher, then rerun (issue #12).

The run is a child process; a few lines in it (test code only) send the
SIGKILL at a chosen moment: two seconds into the Trainer's run_fn, and in
the Pusher after the model was copied beside its version directory but
before the rename. The rerun must clean up, finish, and leave nothing
half-written anywhere.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

from tfx_transfer.components import atomic_pusher
from conftest import REPO, tiny_config

CHILD = """
import os, signal, sys, threading
sys.path.insert(0, "tests")
from conftest import tiny_config
from tfx_transfer.pipeline.runners import local as runners

where, output = sys.argv[1], sys.argv[2]
kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
if where == "trainer":
    # The Trainer reloads tfx_transfer.modules.trainer before taking run_fn from it, so the
    # wrapper goes around the import instead.
    from tfx.utils import import_utils
    import_func = import_utils.import_func_from_module

    def import_armed(module_path, fn_name):
        run_fn = import_func(module_path, fn_name)

        def killed_run_fn(fn_args):
            threading.Timer(2.0, kill).start()
            run_fn(fn_args)
            kill()  # training was shorter than the timer
        return killed_run_fn if fn_name == "run_fn" else run_fn
    import_utils.import_func_from_module = import_armed
else:
    from tfx_transfer.components import atomic_pusher
    copy_dir = atomic_pusher.io_utils.copy_dir

    def killed_copy(src, dst, **kw):
        copy_dir(src, dst, **kw)
        if atomic_pusher.PARTIAL_PREFIX in dst:
            kill()
    atomic_pusher.io_utils.copy_dir = killed_copy
runners.run(tiny_config(output, projector=False))
"""


def _executions(output):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as pb

    config = pb.ConnectionConfig()
    config.sqlite.filename_uri = os.path.join(output, "metadata.sqlite")
    config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    types = {t.id: t.name for t in store.get_execution_types()}
    return [(e.id, types[e.type_id].split(".")[-1], e.last_known_state, e)
            for e in store.get_executions()]


def _kill_then_rerun(output, where):
    from ml_metadata.proto import metadata_store_pb2 as pb
    from tfx_transfer.pipeline import run_lock
    from tfx_transfer.pipeline.runners import local as runners

    child = subprocess.run([sys.executable, "-c", CHILD, where, str(output)], cwd=REPO,
                           env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    running = [(i, t) for i, t, s, _ in _executions(output) if s == pb.Execution.RUNNING]
    node = {"trainer": "Trainer", "pusher": "Pusher"}[where]
    assert [t for _, t in running] == [node], running
    dead_id = running[0][0]
    left = run_lock.execution_dirs(os.path.join(output, "pipeline_root"), dead_id)
    assert left, "the kill left the execution's directories behind"
    with open(os.path.join(output, run_lock.LOCK_FILE)) as f:
        assert json.load(f)["pid"], "the killed run's lock file is still filled in"
    killed = {"left": left, "versions": atomic_pusher.versions(_serving(output)),
              "partial": atomic_pusher.partial_dirs(_serving(output))}

    summary = runners.run(tiny_config(output, projector=False))
    assert set(summary["component_states"].values()) <= {"COMPLETE", "CACHED"}
    states = {i: (t, s, e) for i, t, s, e in _executions(output)}
    assert states[dead_id][1] == pb.Execution.FAILED
    assert "its run died" in states[dead_id][2].custom_properties[
        run_lock.DEAD_RUN_NOTE].string_value
    assert not any(s in (pb.Execution.NEW, pb.Execution.RUNNING) for _, s, _ in states.values())
    assert not any(os.path.exists(d) for d in left)
    return killed, summary


def _serving(output):
    return os.path.join(output, "serving", "classifier")


def _assert_one_whole_version(output, summary):
    base = _serving(output)
    assert atomic_pusher.partial_dirs(base) == []
    versions = atomic_pusher.versions(base)
    assert len(versions) == 1 and summary["push_result"] == f"pushed as version {versions[0]}"
    version_dir = os.path.join(base, str(versions[0]))
    assert summary["pushed_model_dir"] == version_dir
    model_dir = summary["artifacts"]["Trainer"]["model"][0]
    from tfx.utils import path_utils

    assert atomic_pusher.tree_digest(version_dir) == atomic_pusher.tree_digest(
        path_utils.serving_model_path(model_dir))


@pytest.mark.slow
@pytest.mark.e2e
def test_kill_during_trainer_then_rerun(tmp_path, tiny_run):
    from tfx_transfer.pipeline.runners import local as runners

    _, reference = tiny_run
    killed, summary = _kill_then_rerun(tmp_path, "trainer")
    assert killed["versions"] == [] and killed["partial"] == []
    _assert_one_whole_version(tmp_path, summary)
    # Same config and seed as the uninterrupted session run.
    assert summary["metrics"]["accuracy"] == pytest.approx(reference["metrics"]["accuracy"],
                                                           abs=0.02)
    # An unchanged rerun evaluates the model against itself (now the blessed
    # baseline) and blesses it again; the Pusher finds it already served.
    again = runners.run(tiny_config(tmp_path, projector=False))
    assert again["component_states"]["Pusher"] == "COMPLETE"
    (version,) = atomic_pusher.versions(_serving(tmp_path))
    assert again["push_result"] == f"already serving as version {version}"
    assert again["pushed_model_dir"] == summary["pushed_model_dir"]


@pytest.mark.slow
@pytest.mark.e2e
def test_kill_during_pusher_then_rerun(tmp_path):
    from tfx_transfer.pipeline.runners import local as runners

    killed, summary = _kill_then_rerun(tmp_path, "pusher")
    assert killed["versions"] == [], "no version directory is visible after the kill"
    assert len(killed["partial"]) == 1
    _assert_one_whole_version(tmp_path, summary)
    again = runners.run(tiny_config(tmp_path, projector=False))
    assert again["component_states"]["Pusher"] == "CACHED"
    assert len(atomic_pusher.versions(_serving(tmp_path))) == 1
