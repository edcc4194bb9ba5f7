"""Progress events from inside components, for whatever view is listening.

Components run in the CLI's process under LocalDagRunner, so a logging
handler on PROGRESS_LOGGER (pipeline/progress.py) turns these into a bar or
a periodic line. The logger does not propagate: on Kubeflow, with no view
attached, the events cost one function call and print nothing, and per-batch
events never reach the run log.
"""
import contextlib
import logging
import time

PROGRESS_LOGGER = "tfx_transfer.progress"
_log = logging.getLogger(PROGRESS_LOGGER)
_log.propagate = False


def emit(task: str, done: int, total=None, unit: str = "img", **info) -> None:
    """`done` of `total` units of `task` so far; info: a finished epoch's metrics etc."""
    if _log.handlers:
        _log.info(task, extra={"progress": dict(task=task, done=done, total=total, unit=unit,
                                                **info)})


@contextlib.contextmanager
def phase(task: str, total=None, unit: str = "img"):
    """A step whose end is known but whose progress is not (a projection, the
    export): the view shows it running, then one line with its seconds."""
    start = time.monotonic()
    emit(task, 0, total, unit, started=True)
    yield
    # No rate: the whole count was there at the start (points projected at once).
    emit(task, total or 0, total, unit, finished=True, seconds=time.monotonic() - start,
         rate=False)
