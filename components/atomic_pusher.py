"""A Pusher executor whose versions appear whole or not at all, and only once.

TFX's filesystem Pusher copies the model file by file into
<base>/<unix time>/: a kill leaves a version with some of its files, two runs
in the same second write the same version (and ML Metadata records the one
that lost as pushed), and an unchanged rerun pushes a byte-identical model as a
new version, so servers reload it. This executor

- copies into a hidden sibling (``.partial-<version>-<host>-<pid>``) and then
  renames it to ``<version>``: on a local or POSIX file system the rename is
  atomic and fails when another Pusher took that number, which then moves on to
  the next one;
- does not push a blessed model whose files are identical to the newest
  version: the pushed_model artifact points at that version and its
  ``push_result`` says "already serving as version N".

It is given to the stock Pusher with ``custom_executor_spec`` (EXECUTOR_SPEC),
which the Kubeflow compiler carries over like any executor class. On object
stores (gs://) a directory rename is a copy, so only the idempotence holds.
"""
from __future__ import annotations

import hashlib
import os
import socket
import time
from typing import Optional

from absl import logging
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

PARTIAL_PREFIX = ".partial-"
PUSH_RESULT = "push_result"  # custom property of the pushed_model artifact
_CLAIM_TRIES = 100


def tree_digest(path: str) -> str:
    """sha256 over the relative paths and contents of every file under path."""
    digest = hashlib.sha256()
    files = []
    for root, _, names in fileio.walk(path):
        files += [os.path.join(root, n) for n in names]
    for f in sorted(files, key=lambda f: os.path.relpath(f, path)):
        digest.update(os.path.relpath(f, path).encode() + b"\0")
        with fileio.open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def versions(base: str) -> list:
    """Version numbers under base: names made of ASCII digits only (`²` is not 2)."""
    if not fileio.exists(base):
        return []
    names = [n.rstrip("/") for n in fileio.listdir(base)]
    return sorted(int(n) for n in names if n.isascii() and n.isdigit())


def partial_dirs(base: str) -> list:
    if not fileio.exists(base):
        return []
    return [os.path.join(base, n.rstrip("/")) for n in fileio.listdir(base)
            if n.startswith(PARTIAL_PREFIX)]


def partial_owner(path: str) -> Optional[tuple]:
    """(host, pid) of the Pusher that wrote a .partial- directory, from its name."""
    rest = os.path.basename(path.rstrip("/"))[len(PARTIAL_PREFIX):]
    host, _, pid = rest.partition("-")[2].rpartition("-")
    return (host, int(pid)) if host and pid.isdigit() else None


def push_atomically(model_path: str, base: str) -> tuple:
    """(version, directory, result): copies model_path under base as a new version,
    or finds it already there as the newest one."""
    existing = versions(base)
    if existing:
        newest = os.path.join(base, str(existing[-1]))
        if tree_digest(newest) == tree_digest(model_path):
            return existing[-1], newest, f"already serving as version {existing[-1]}"
    version = max([int(time.time())] + [v + 1 for v in existing[-1:]])
    fileio.makedirs(base)
    partial = os.path.join(base, f"{PARTIAL_PREFIX}{version}-{socket.gethostname()}-{os.getpid()}")
    io_utils.copy_dir(model_path, partial)
    for _ in range(_CLAIM_TRIES):
        target = os.path.join(base, str(version))
        try:
            fileio.rename(partial, target, overwrite=False)
            return version, target, f"pushed as version {version}"
        except Exception:  # noqa: BLE001 -- each file system raises its own type
            if not fileio.exists(target):
                raise
        version += 1  # another Pusher took this number first
    raise RuntimeError(f"could not claim a version number under {base} "
                       f"after {_CLAIM_TRIES} tries")


class Executor(pusher_executor.Executor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem":
            return super().Do(input_dict, output_dict, exec_properties)
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        version, target, result = push_atomically(model_path,
                                                  destination.filesystem.base_directory)
        logging.info("Pusher: %s (%s)", result, target)
        print(f"Pusher: {result} ({target})")
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=target, pushed_version=str(version))
        model_push.set_string_custom_property(PUSH_RESULT, result)


EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
