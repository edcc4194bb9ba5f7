"""Run lock, atomic and idempotent push, cleaning after a killed run (issue #12)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tfx_transfer.components import atomic_pusher
from tfx_transfer.pipeline import run_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLD_LOCK = """
import sys, time
from tfx_transfer.pipeline import run_lock
with run_lock.hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(output):
    """A process holding the lock on output, once it says so."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_fails_at_once_naming_the_holder(tmp_path):
    from conftest import tiny_config
    from tfx_transfer.pipeline.runners import local as runners

    proc = _holder(tmp_path)
    try:
        start = time.time()
        with pytest.raises(run_lock.RunLocked, match=rf"in use by another run \(pid {proc.pid} "
                                                     r"on .*, started 20\d\d-"):
            runners.run(tiny_config(tmp_path))
        assert time.time() - start < 5
        assert not os.path.exists(tmp_path / "pipeline_root"), "nothing ran"
    finally:
        proc.kill()
        proc.wait()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with run_lock.hold(str(tmp_path)) as stale:
        assert stale["pid"] == proc.pid
        with pytest.raises(run_lock.RunLocked, match=f"pid {os.getpid()}"):
            with run_lock.hold(str(tmp_path)):
                pass
    with run_lock.hold(str(tmp_path)) as stale:
        assert stale is None, "a run that ended leaves no stale holder"


def _model(path, payload=b"weights"):
    os.makedirs(os.path.join(path, "variables"), exist_ok=True)
    with open(os.path.join(path, "variables", "variables.data-00000-of-00001"), "wb") as f:
        f.write(payload)
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(b"graph")
    return str(path)


def test_push_is_atomic_and_idempotent(tmp_path):
    base = str(tmp_path / "serving")
    a = _model(tmp_path / "a")
    v1, d1, r1 = atomic_pusher.push_atomically(a, base)
    assert r1 == f"pushed as version {v1}" and d1 == os.path.join(base, str(v1))
    assert sorted(os.listdir(d1)) == ["saved_model.pb", "variables"]
    # The same files again, from another artifact directory: not pushed again.
    v2, d2, r2 = atomic_pusher.push_atomically(_model(tmp_path / "a_again"), base)
    assert (v2, d2, r2) == (v1, d1, f"already serving as version {v1}")
    # A different model gets a new, higher version even within the same second.
    v3, _, r3 = atomic_pusher.push_atomically(_model(tmp_path / "b", b"other"), base)
    assert v3 > v1 and r3 == f"pushed as version {v3}"
    assert sorted(os.listdir(base)) == sorted([str(v1), str(v3)]), "no partial directory left"


def test_push_moves_on_when_another_pusher_took_the_number(tmp_path, monkeypatch):
    base = tmp_path / "serving"
    taken = int(time.time()) + 1000
    monkeypatch.setattr(atomic_pusher.time, "time", lambda: taken)
    real_copy = atomic_pusher.io_utils.copy_dir

    def copy_then_race(src, dst, **kw):
        real_copy(src, dst, **kw)
        _model(base / str(taken), b"the other run's model")  # claimed meanwhile

    monkeypatch.setattr(atomic_pusher.io_utils, "copy_dir", copy_then_race)
    version, target, _ = atomic_pusher.push_atomically(_model(tmp_path / "m"), str(base))
    assert version == taken + 1
    with open(base / str(taken) / "variables" / "variables.data-00000-of-00001", "rb") as f:
        assert f.read() == b"the other run's model", "the other version is untouched"
    assert atomic_pusher.tree_digest(target) == atomic_pusher.tree_digest(str(tmp_path / "m"))


def test_only_ascii_digit_directories_are_versions(tmp_path):
    for name in ("7", "12", "²", ".partial-13-h-1", "notes"):
        os.makedirs(tmp_path / name)
    assert atomic_pusher.versions(str(tmp_path)) == [7, 12]


def test_recover_fails_dead_executions_and_removes_their_leftovers(tmp_path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as pb

    md = str(tmp_path / "metadata.sqlite")
    config = pb.ConnectionConfig()
    config.sqlite.filename_uri = md
    config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(config)
    type_id = store.put_execution_type(pb.ExecutionType(name="Trainer"))
    done, dead = store.put_executions([
        pb.Execution(type_id=type_id, last_known_state=pb.Execution.COMPLETE),
        pb.Execution(type_id=type_id, last_known_state=pb.Execution.RUNNING,
                     custom_properties={"__stateful_working_dir_index__": pb.Value(
                         string_value="0f1e2d3c")})])
    root = tmp_path / "pipeline_root"
    kept = [root / "Trainer" / "model" / str(done)]
    gone = [root / "Trainer" / "model" / str(dead), root / "Trainer" / "model_run" / str(dead),
            root / "Trainer" / ".system" / "executor_execution" / str(dead),
            root / "Trainer" / ".system" / "stateful_working_dir" / "0f1e2d3c"]
    for d in kept + gone:
        os.makedirs(d)
    serving = tmp_path / "serving"
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    mine = serving / f".partial-5-{os.uname().nodename}-{os.getpid()}"
    orphan = serving / f".partial-6-{os.uname().nodename}-{dead_pid.pid}"
    os.makedirs(mine)
    os.makedirs(orphan)

    done_what = run_lock.recover(str(root), md, str(serving), {"pid": 1, "host": "h"})
    assert done_what["failed_executions"] == [dead]
    assert all(not d.exists() for d in gone + [orphan])
    assert all(d.exists() for d in kept + [mine]), "a live pusher's work is left alone"
    states = {e.id: e for e in store.get_executions()}
    assert states[dead].last_known_state == pb.Execution.FAILED
    assert "its run died (pid 1" in states[dead].custom_properties[
        run_lock.DEAD_RUN_NOTE].string_value
    assert states[done].last_known_state == pb.Execution.COMPLETE
    assert run_lock.recover(str(root), md, str(serving))["failed_executions"] == []
