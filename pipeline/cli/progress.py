"""What a local run shows while it runs, and where everything else goes.

TFX, Beam and TensorFlow print thousands of lines (protobuf dumps, type-hint
notes, C++ warnings) that matter only when something breaks. `run_view`
sends file descriptors 1 and 2 -- so Python logging, warnings, print() and
C++ output alike -- to <output>/logs/run.log, and the terminal gets one line
per component plus live progress built from two sources: TFX's own
component start/finish (component_hooks, around TFX's Launcher), and the
events components emit through modules/progress_events.py (feature
extraction, epochs, export, the projector's embedding and projections) or
that component_hooks emits for them (the Evaluator's inference over TFMA).
A step with a count gets rate and ETA; one without gets its seconds when it
ends.

On a terminal the current work is one line redrawn in place (a tqdm meter
with rate and ETA); piped, a plain line at most every LINE_EVERY_S.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Dict, Optional

from tfx_transfer.modules.progress_events import PROGRESS_LOGGER

LOG_DIR = "logs"
RUN_LOG = "run.log"
QUIET, NORMAL, VERBOSE = 0, 1, 2
LINE_EVERY_S = 10.0  # piped: at most one progress line per task this often
HEARTBEAT_S = 30.0
NAME_WIDTH = 31  # fits latest_blessed_model_resolver  # piped: a "still running" line after this long without one

def verbosity(args) -> int:
    """QUIET, NORMAL or VERBOSE from --quiet / --verbose (options.add_output_flags)."""
    return QUIET if args.quiet else VERBOSE if args.verbose else NORMAL


def seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60):02d} s"


def _metrics(info: Dict) -> str:
    parts = []
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if k in info:
            v = info[k]
            parts.append(f"{k} {100 * v:.1f}%" if "accuracy" in k else f"{k} {v:.3f}")
    return "  ".join(parts)


class ProgressView(logging.Handler):
    """Turns TFX lifecycle records and progress events into terminal lines."""

    def __init__(self, out, live: bool, totals: Optional[Dict[str, int]] = None,
                 clock=time.monotonic):
        super().__init__(level=logging.INFO)
        self.out, self.live, self.clock = out, live, clock
        self.totals = totals or {}  # expected images per split, for ETAs
        self.lock = threading.RLock()
        self.node: Optional[str] = None
        self.node_t0 = 0.0
        self.cached = False
        self.task: Optional[dict] = None
        self.last_line = 0.0
        self.status_on = False

    # -- records -------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            with self.lock:
                info = getattr(record, "progress", None)
                if info is None:
                    return
                if "component" not in info:
                    self._progress(info)
                elif info["event"] == "start":
                    self._start(info["component"])
                else:
                    self.cached = info.get("cached", False)
                    self._finish(info["component"])
        except Exception:  # noqa: BLE001 -- a display bug must not fail the run
            self.handleError(record)

    def _start(self, node: str) -> None:
        self.node, self.node_t0, self.cached, self.task = node, self.clock(), False, None
        self.last_line = self.clock()
        self._status()

    def _finish(self, node: str) -> None:
        took = self.clock() - self.node_t0 if self.node == node else 0.0
        self._print(f"  {node:<{NAME_WIDTH}}{'cached' if self.cached else 'done':<8}{seconds(took):>10}")
        self.node, self.task = None, None

    def _progress(self, info: dict) -> None:
        now = self.clock()
        new = self.task is None or self.task["task"] != info["task"]
        if new:
            self.task = {"task": info["task"], "t0": now}
        self.task.update(info)
        if self.task.get("total") is None and info["task"].startswith("features "):
            self.task["total"] = self.totals.get(info["task"].split()[-1])
        if self.task.get("total") is None and info.get("split"):
            self.task["total"] = self.totals.get(info["split"])
        if info.get("heading"):  # e.g. compare's "run 2/4: ..." before its components
            self._print(info["task"])
            self.task = None
        elif info.get("epoch_end"):
            self._print(f"    {info['task']:<22}{_metrics(info):<58}{seconds(now - self.task['t0']):>8}")
        elif info.get("finished"):
            took = info.get("seconds", now - self.task["t0"])
            count = f"{info['done']} {info['unit']}" if info["done"] else ""
            if info["done"] and info.get("rate", True):
                count += f", {info['done'] / max(took, 1e-3):.1f} {info['unit']}/s"
            self._print(f"    {info['task']:<32}{count:<48}{seconds(took):>8}")
            self.task = None
        elif self.live:
            self._status()
        elif new and info["done"] == 0 and not info.get("started"):
            self._print(f"    {info['task']}")  # a counted task announces its start (features)
        elif not new and now - self.last_line >= LINE_EVERY_S:
            self._print(f"    {self._meter(now, ascii_only=True)}")

    # -- output --------------------------------------------------------
    def _meter(self, now: float, ascii_only: bool = False, width: int = 100) -> str:
        from tqdm import tqdm

        t = self.task
        elapsed = now - t["t0"]
        if not t.get("done"):
            return f"{t['task']} ({seconds(elapsed)})"
        total = t.get("total")
        if total is not None and t["done"] > total:
            total = None  # a split estimate (hash layout) ran short: show the count only
        if ascii_only:
            rate = t["done"] / max(elapsed, 1e-3)
            eta = f", ETA {seconds((total - t['done']) / rate)}" if total else ""
            return f"{t['task']}: {t['done']}{'/' + str(total) if total else ''} {t['unit']}, " \
                   f"{rate:.1f} {t['unit']}/s{eta}"
        return tqdm.format_meter(t["done"], total, elapsed, ncols=width, prefix=t["task"],
                                 unit=t["unit"])

    def _status(self) -> None:
        if not self.live or self.node is None:
            return
        now = self.clock()
        width = self._width()
        head = f"  {self.node:<{NAME_WIDTH}}"
        if self.task:
            line = head + self._meter(now, width=max(40, width - len(head) - 1))
        else:
            line = head + f"running {seconds(now - self.node_t0)}"
        self.out.write("\r\x1b[K" + line[:width - 1])
        self.out.flush()
        self.status_on = True

    def _print(self, line: str) -> None:
        if self.status_on:
            self.out.write("\r\x1b[K")
            self.status_on = False
        self.out.write(line + "\n")
        self.out.flush()
        self.last_line = self.clock()
        self._status()

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.out.fileno()).columns
        except (OSError, ValueError):
            return 100

    def tick(self) -> None:
        """Once a second: redraw the clock, or say a long component is still going."""
        with self.lock:
            if self.live:
                self._status()
            # Spaced out as a component runs on (30 s, 1 min, 2 min, ...): a slow
            # export on a busy machine must not flood a log file.
            elif self.node and self.clock() - self.last_line >= max(
                    HEARTBEAT_S, (self.clock() - self.node_t0) / 2):
                what = f": {self.task['task']}" if self.task else ""
                self._print(f"  {self.node:<{NAME_WIDTH}}running {seconds(self.clock() - self.node_t0)}{what}")

    def clear(self) -> None:
        with self.lock:
            if self.status_on:
                self.out.write("\r\x1b[K")
                self.out.flush()
                self.status_on = False


@contextlib.contextmanager
def component_hooks():
    """Reports each component's start and finish (and whether the cache served it).

    TFX logs "Component X is running/finished" through absl, but after the
    Transform runs absl's INFO records no longer arrive (1.16), so the view
    wraps the Launcher that LocalDagRunner and BeamDagRunner both use."""
    from tfx.orchestration.portable import launcher

    from tfx_transfer.modules import progress_events

    launch, prepare = launcher.Launcher.launch, launcher.Launcher._prepare_execution

    def node(self):
        return self._pipeline_node.node_info.id

    def hooked_prepare(self, *args, **kwargs):
        result = prepare(self, *args, **kwargs)
        self._tfx_transfer_cached = result.execution_info is not None and \
            not result.is_execution_needed
        return result

    def hooked_launch(self, *args, **kwargs):
        progress_events.emit(node(self), 0, component=node(self), event="start")
        result = launch(self, *args, **kwargs)
        progress_events.emit(node(self), 0, component=node(self), event="finish",
                             cached=getattr(self, "_tfx_transfer_cached", False))
        return result

    # TFMA says nothing while it runs the model over the eval split: count the
    # examples its inference DoFn (in this process: FnApiRunner, one worker)
    # has scored. The transform_features pass uses the same DoFn; only the
    # predictions pass counts.
    from tensorflow_model_analysis import constants as tfma_constants
    from tensorflow_model_analysis.utils import model_util, util as tfma_util

    infer = model_util.ModelSignaturesDoFn._batch_reducible_process
    scored = {"n": 0}

    def hooked_infer(self, batched_extract):
        out = infer(self, batched_extract)
        if self._output_keypath == [tfma_constants.PREDICTIONS_KEY]:
            scored["n"] += tfma_util.batch_size(batched_extract)
            progress_events.emit("evaluating", scored["n"], split="eval")
        return out

    def hooked_launch_counted(self, *args, **kwargs):
        scored["n"] = 0
        return hooked_launch(self, *args, **kwargs)

    launcher.Launcher.launch, launcher.Launcher._prepare_execution = \
        hooked_launch_counted, hooked_prepare
    model_util.ModelSignaturesDoFn._batch_reducible_process = hooked_infer
    try:
        yield
    finally:
        launcher.Launcher.launch, launcher.Launcher._prepare_execution = launch, prepare
        model_util.ModelSignaturesDoFn._batch_reducible_process = infer


@contextlib.contextmanager
def run_view(output: str, verbosity: int = NORMAL, totals: Optional[Dict[str, int]] = None):
    """Runs the body with fds 1/2 going to <output>/logs/run.log (also the terminal if VERBOSE).

    Yields the terminal as a text stream for whatever must reach the user.
    """
    os.makedirs(os.path.join(output, LOG_DIR), exist_ok=True)
    log_path = os.path.join(output, LOG_DIR, RUN_LOG)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    term = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8", errors="replace")
    read_fd, write_fd = os.pipe()
    logfile = open(log_path, "ab")

    def pump():
        while True:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            logfile.write(chunk)
            logfile.flush()  # a killed run keeps its log up to the end
            if verbosity == VERBOSE:
                os.write(saved_err, chunk)

    pumper = threading.Thread(target=pump, name="run-log", daemon=True)
    pumper.start()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)

    view = None
    handlers = []
    stop = threading.Event()
    if verbosity != QUIET:
        view = ProgressView(term, live=term.isatty() and verbosity == NORMAL, totals=totals)
        logger = logging.getLogger(PROGRESS_LOGGER)
        logger.addHandler(view)
        logger.setLevel(logging.INFO)
        handlers.append(logger)

        def ticker():
            while not stop.wait(1.0):
                view.tick()

        threading.Thread(target=ticker, name="progress", daemon=True).start()
    try:
        yield term
    finally:
        stop.set()
        for logger in handlers:
            logger.removeHandler(view)
        if view:
            view.clear()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        pumper.join(timeout=5)
        os.close(read_fd)
        logfile.close()
        term.close()
