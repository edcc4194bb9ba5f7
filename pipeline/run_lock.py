"""One run per output directory, and the cleaning up after a run that was killed.

Two local runs into the same --output would share ML Metadata, the pipeline
root and the serving directory, and each would record the other's files as its
own. `hold(output)` takes an exclusive lock (flock on <output>/.run.lock, which
the kernel releases when the process dies however it dies); a second run fails
at once naming the holder. A lock file that is still filled in when the lock is
free was left by a run that did not finish: `recover` then

- marks the executions that run left NEW or RUNNING in MLMD as FAILED
  (holding the lock, no live run can own them);
- removes their output, executor and temp directories under the pipeline root
  (TFX names them after the execution id and removes them itself only when
  the executor raises, not when the process is killed);
- removes half-written pushes (components/atomic_pusher.py) of dead processes
  of this host from the serving directory.

It runs at every start, not only after a stale lock, because a killed run's
leftovers stay until some run cleans them.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import glob
import json
import logging
import os
import shutil
import socket
from typing import Dict, Iterator, List, Optional

log = logging.getLogger("tfx_transfer")

LOCK_FILE = ".run.lock"
DEAD_RUN_NOTE = "tfx_transfer_failure"  # custom property set on executions marked FAILED
# TFX's custom property naming an execution's .system/stateful_working_dir/<index>.
_STATEFUL_INDEX = "__stateful_working_dir_index__"


class RunLocked(RuntimeError):
    """Another live run holds the output directory."""


def _describe(holder: Dict) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')}")


def _read(fd: int) -> Optional[Dict]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    try:
        return json.loads(text) if text else None
    except ValueError:
        return {"raw": text}


@contextlib.contextmanager
def hold(output: str, what: str = "run") -> Iterator[Optional[Dict]]:
    """Holds the lock of `output` for the block; yields the holder a dead run left, if any."""
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd) or {}
            raise RunLocked(f"{output} is in use by another {holder.get('what', 'run')} "
                            f"({_describe(holder)}); wait for it to finish or choose "
                            "another --output") from None
        stale = _read(fd)
        if stale:
            log.warning("taking over the lock on %s left by a run that did not finish (%s)",
                        output, _describe(stale))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield stale
        finally:
            # An empty lock file is the sign of a run that ended; the lock itself
            # goes with the file descriptor.
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def fail_dead_executions(metadata_path: str, note: str) -> list:
    """Marks NEW/RUNNING executions FAILED and returns them. Call only under the lock."""
    if not os.path.exists(metadata_path):
        return []
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
    store = metadata_store.MetadataStore(config)
    Execution = metadata_store_pb2.Execution
    dead = [e for e in store.get_executions()
            if e.last_known_state in (Execution.NEW, Execution.RUNNING)]
    for e in dead:
        e.last_known_state = Execution.FAILED
        e.custom_properties[DEAD_RUN_NOTE].string_value = note
    if dead:
        store.put_executions(dead)
    return dead


def execution_dirs(pipeline_root: str, execution_id: int,
                   stateful_index: Optional[str] = None) -> List[str]:
    """What TFX made for an execution: <node>/<output key>/<id>, <node>/.system/<kind>/<id>,
    and <node>/.system/stateful_working_dir/<index>."""
    names = [str(execution_id)] + ([stateful_index] if stateful_index else [])
    return sorted(d for name in names for d in
                  glob.glob(os.path.join(pipeline_root, "*", "*", name)) +
                  glob.glob(os.path.join(pipeline_root, "*", ".system", "*", name)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(pipeline_root: str, metadata_path: str, serving_base: Optional[str],
            stale: Optional[Dict] = None) -> Dict[str, list]:
    """Cleans what killed runs left; returns what it did (for the log and tests)."""
    note = f"its run died ({_describe(stale)})" if stale else "its run died"
    dead = fail_dead_executions(metadata_path, note)
    failed = [e.id for e in dead]
    removed = []
    for e in dead:
        index = e.custom_properties[_STATEFUL_INDEX].string_value \
            if _STATEFUL_INDEX in e.custom_properties else None
        for d in execution_dirs(pipeline_root, e.id, index):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    if serving_base and not serving_base.startswith(("gs://", "s3://")):
        from tfx_transfer.components import atomic_pusher

        host = socket.gethostname()
        for d in atomic_pusher.partial_dirs(serving_base):
            owner = atomic_pusher.partial_owner(d)
            if owner and owner[0] == host and not _alive(owner[1]):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
    if failed or removed:
        log.warning("cleaned up after a killed run: executions %s marked FAILED in MLMD; "
                    "removed %s", failed, removed)
    return {"failed_executions": failed, "removed": removed}
