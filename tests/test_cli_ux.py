"""The CLI as a user meets it: mistakes rejected before TensorFlow is imported
(one line, exit 2, nothing written), the progress view on and off a terminal,
Ctrl-C, and the result block."""
import io
import json
import logging
import os
import pty
import select
import signal
import subprocess
import sys
import time

import h5py
import pytest

from tests.conftest import REPO, SAMPLE

HEAVY = ("tensorflow", "tfx", "apache_beam", "tf_keras", "tensorflow_model_analysis")

# Runs the CLI in a fresh interpreter and reports its exit code and which heavy
# packages it imported by then.
_DRIVER = """
import json, sys
from tfx_transfer.pipeline import cli
try:
    rc = cli.main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})
print(json.dumps({{"rc": rc, "heavy": heavy}}))
""".format(heavy=HEAVY)


def _env():
    # This checkout first: tfx_transfer/__init__.py then finds this checkout's
    # folders, whichever one the venv's editable install points at.
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, TF_USE_LEGACY_KERAS="1")


def run_cli(*args, timeout=120):
    proc = subprocess.run([sys.executable, "-c", _DRIVER, *args], capture_output=True, text=True,
                          cwd=REPO, env=_env(), timeout=timeout)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["rc"], result["heavy"], proc.stderr.strip().splitlines()


def _weights_file(path, layers):
    """A Keras-layout HDF5 weights file: layer_names, each with weight_names."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n, _ in layers]
        for name, has_weights in layers:
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}/kernel:0".encode()] if has_weights else []
    return str(path)


@pytest.fixture
def mistakes(tmp_path):
    """(flags, expected phrase in the error) for every mistake the CLI must reject."""
    from tfx_transfer.pipeline import preflight

    (tmp_path / "empty").mkdir()
    (tmp_path / "one" / "cat").mkdir(parents=True)
    (tmp_path / "one" / "cat" / "a.jpg").write_bytes(b"x")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"x")
    (tmp_path / "trainonly" / "train" / "a").mkdir(parents=True)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    (tmp_path / "notweights.h5").write_text("not a weights file")
    mnv2 = preflight.expected_layers("MobileNetV2")
    fits = [(f"l{i}", True) for i in range(mnv2["count"])]
    with_top = _weights_file(tmp_path / "with_top.h5", fits + [("predictions", True)])
    out = str(tmp_path / "out")
    data = ["--data", SAMPLE, "--output", out]
    return out, [
        (["--data", str(tmp_path / "missing"), "--output", out], "does not exist"),
        (["--data", str(tmp_path / "empty"), "--output", out], "is empty"),
        (["--data", str(tmp_path / "one"), "--output", out], "at least 2"),
        (["--data", str(tmp_path / "flat"), "--output", out], "no class folders"),
        (["--data", str(tmp_path / "trainonly"), "--output", out], "no test/ or eval/"),
        (data + ["--backbone", "MobilNetV2"], "did you mean MobileNetV2"),
        (data + ["--set", "epoch=3"], "did you mean 'epochs'"),
        (data + ["--learning-rate", "50"], "'learning_rate': must be in (0, 10)"),
        (data + ["--set", "eval_fraction=1.5"], "'eval_fraction'"),
        (data + ["--config", str(tmp_path / "bad.yaml")], "not valid YAML at line 2"),
        (data + ["--weights", str(tmp_path / "notweights.h5")], "not a Keras HDF5 weights file"),
        (data + ["--weights", with_top], "use the _no_top file"),
        (["--data", SAMPLE, "--output", str(tmp_path / "a_file")], "is a file"),
        (["--data", SAMPLE, "--output", str(tmp_path / "a_file" / "sub")], "cannot be created"),
    ]


def test_every_mistake_is_one_line_exit_2_before_any_heavy_import(mistakes):
    out, cases = mistakes
    for flags, phrase in cases:
        rc, heavy, err = run_cli("run", *flags)
        assert rc == 2, (flags, err)
        assert len(err) == 1 and err[0].startswith("tfx-transfer: error: "), (flags, err)
        assert phrase in err[0], (flags, err[0])
        assert heavy == [], (flags, heavy)
        assert not os.path.exists(out), f"{flags} wrote {out}"


def test_weights_file_for_another_backbone_names_both_layer_counts(tmp_path):
    from tfx_transfer.pipeline import preflight

    mnv1 = preflight.expected_layers("MobileNet")
    path = _weights_file(tmp_path / "v1.h5", [(f"conv{i}", True) for i in range(mnv1["count"])]
                         + [("conv_pad", False)])
    with pytest.raises(preflight.PreflightError) as e:
        preflight.check_weights(path, "MobileNetV2")
    want = preflight.expected_layers("MobileNetV2")["count"]
    assert f"it has {mnv1['count']} layers with weights" in str(e.value)
    assert f"needs {want}" in str(e.value)
    preflight.check_weights(path, "MobileNet")  # fits its own backbone: no error


def test_stored_layer_count_matches_the_built_backbone():
    from tfx_transfer.modules import backbones
    from tfx_transfer.pipeline import preflight

    model = backbones.get("MobileNetV2").build(96, weights=None)
    layers = [l.name for l in model.layers if l.weights]
    assert preflight.expected_layers("MobileNetV2") == {
        "count": len(layers), "first": layers[0], "last": layers[-1]}
    # Every registered backbone has its count, so a weights file is checked
    # against any of them (`python -m tfx_transfer.pipeline.preflight NAME` adds one).
    stored = json.load(open(preflight.BACKBONE_LAYERS_FILE))
    assert set(stored) == set(backbones.names())
    assert all(v["count"] > 0 and v["first"] and v["last"] for v in stored.values())


def test_help_shows_a_sentence_and_default_for_every_run_flag():
    from tfx_transfer.pipeline import cli

    parser = cli.build_parser()
    run = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "run")[1]
    for action in run._actions:
        if action.dest == "help":
            continue
        assert action.help and len(action.help) > 10, action.dest
        if action.dest not in ("config", "verbose", "quiet", "set_fields"):
            assert "default" in action.help, action.dest
    assert "(default: 0.001)" in run.format_help()  # learning rate, from RunConfig


def test_version_and_set_fields(capsys):
    from tfx_transfer.pipeline import cli
    from tfx_transfer.pipeline.cli import options

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("tfx-transfer ")
    args = cli.build_parser().parse_args(
        ["run", "--data", SAMPLE, "--set", "label_smoothing=0.1", "--set", "augment=[flip, crop]",
         "--augment", "zoom", "--unfreeze-groups", "3", "--min-accuracy", "0.5"])
    config = options.config_from_args(args).flat()
    assert config["label_smoothing"] == 0.1 and config["augment"] == ["flip", "crop"]
    assert config["unfreeze_groups"] == 3 and config["min_accuracy"] == 0.5


# --------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _record(msg, *args, progress=None):
    r = logging.LogRecord("absl", logging.INFO, __file__, 1, msg, args, None)
    if progress is not None:
        r.progress = progress
    return r


def _component(view, name, event, cached=False):
    view.emit(_record("x", progress=dict(task=name, done=0, component=name, event=event,
                                         cached=cached)))


def _feed(view, clock):
    _component(view, "ImageExampleGen", "start")
    clock.t = 3.0
    _component(view, "ImageExampleGen", "finish")
    _component(view, "Transform", "start")
    _component(view, "Transform", "finish", cached=True)
    _component(view, "Trainer", "start")
    for i in range(1, 301):  # features of 300 images, one per 0.1 s
        clock.t += 0.1
        view.emit(_record("x", progress=dict(task="features train", done=i, total=None, unit="img")))
    for epoch in (1, 2):
        for b in range(1, 9):
            clock.t += 0.5
            view.emit(_record("x", progress=dict(task=f"probe epoch {epoch}/2", done=b, total=8,
                                                 unit="batch")))
        view.emit(_record("x", progress=dict(task=f"probe epoch {epoch}/2", done=8, total=8,
                                             unit="batch", epoch_end=True, loss=1.5,
                                             accuracy=0.4, val_accuracy=0.35)))
    _component(view, "Trainer", "finish")


def test_progress_view_off_a_terminal_prints_few_plain_lines():
    from tfx_transfer.pipeline.cli.progress import ProgressView

    out, clock = io.StringIO(), FakeClock()
    _feed(ProgressView(out, live=False, totals={"train": 300}, clock=clock), clock)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    done = [l.split()[0] for l in lines if l.startswith("  ") and not l.startswith("    ")]
    assert done == ["ImageExampleGen", "Transform", "Trainer"]
    assert "cached" in next(l for l in lines if "Transform" in l)
    assert sum("probe epoch 1/2" in l and "val_accuracy 35.0%" in l for l in lines) == 1
    feature_lines = [l for l in lines if "features train" in l]
    # 30 s of extraction, a line at most every 10 s; the ETA uses the preflight's count.
    assert 2 <= len(feature_lines) <= 4 and "/300 img" in feature_lines[1] and "ETA" in feature_lines[1]
    assert len(lines) < 20


def test_progress_view_on_a_terminal_redraws_one_line():
    from tfx_transfer.pipeline.cli.progress import ProgressView

    out, clock = io.StringIO(), FakeClock()
    _feed(ProgressView(out, live=True, totals={"train": 300}, clock=clock), clock)
    text = out.getvalue()
    assert text.count("\r\x1b[K") > 300  # redrawn in place, not one line per update
    assert "img/s" in text and "batch/s" in text  # tqdm meters with rate
    final_lines = [l.split("\r\x1b[K")[-1] for l in text.split("\n") if l.split("\r\x1b[K")[-1]]
    assert sum("probe epoch 2/2" in l and "loss" in l for l in final_lines) == 1


_CAPTURE = """
import logging, os, sys, time
logging.basicConfig(level=logging.INFO)
from tfx_transfer.pipeline.cli import progress
from tfx_transfer.modules import progress_events
with progress.run_view(sys.argv[1], progress.NORMAL, totals={"train": 40, "eval": 20}):
    os.write(2, b"C++ noise on fd 2\\n")
    print("print() noise")
    progress_events.emit("Trainer", 0, component="Trainer", event="start")
    for i in range(1, 41):
        progress_events.emit("features train", i)
    logging.getLogger("absl").info("protobuf dump line")
    progress_events.emit("Trainer", 0, component="Trainer", event="finish")
    progress_events.emit("Evaluator", 0, component="Evaluator", event="start")
    for i in range(1, 21):  # as component_hooks counts TFMA's inference
        progress_events.emit("evaluating", i, split="eval")
    progress_events.emit("Evaluator", 0, component="Evaluator", event="finish")
    progress_events.emit("EmbeddingProjector", 0, component="EmbeddingProjector", event="start")
    with progress_events.phase("UMAP before", 20, "points"):
        time.sleep(0.2)
    progress_events.emit("EmbeddingProjector", 0, component="EmbeddingProjector", event="finish")
print("result line")
"""


def _check_capture(output, terminal):
    log = open(os.path.join(output, "logs", "run.log")).read()
    for noise in ("C++ noise on fd 2", "print() noise", "protobuf dump line"):
        assert noise in log and noise not in terminal
    assert "Trainer" in terminal and "result line" in terminal
    # The projection's own line, with its seconds, once, before its component's.
    umap = [l.split("\r\x1b[K")[-1] for l in terminal.splitlines() if "UMAP before" in l
            and "points" in l and l.rstrip().endswith(" s")]
    assert len(umap) == 1 and terminal.index("UMAP before  ") < terminal.rindex("EmbeddingProjector")


def test_run_view_piped_sends_everything_else_to_run_log(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _CAPTURE, str(tmp_path)], capture_output=True,
                          text=True, cwd=REPO, env=_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    _check_capture(str(tmp_path), proc.stdout + proc.stderr)
    assert "\r" not in proc.stdout


def test_run_view_on_a_pty_draws_a_live_meter(tmp_path):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", _CAPTURE, str(tmp_path)], stdout=slave,
                            stderr=slave, cwd=REPO, env=_env())
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the pty
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=30) == 0
    terminal = b"".join(chunks).decode()
    _check_capture(str(tmp_path), terminal)
    assert "\r\x1b[K" in terminal and "40/40" in terminal
    assert "evaluating" in terminal and "20/20" in terminal  # the eval split's count as total


def test_ctrl_c_ends_with_one_line_and_exit_130(tmp_path):
    out = tmp_path / "run"
    # SIGINT at its default in the child: a test run started in the background
    # (`cmd &` in a script) inherits SIGINT ignored, and Python then leaves it so.
    proc = subprocess.Popen([sys.executable, "-m", "tfx_transfer.pipeline.cli", "run", "--data", SAMPLE,
                             "--weights", "none", "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=_env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not (out / "logs" / "run.log").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr + stdout
    assert "Run the same command again to resume" in stderr
    assert len([l for l in stderr.splitlines() if l.strip()]) == 1


# --------------------------------------------------------------------------
def _summary(tmp_path):
    return {
        "backbone": "MobileNetV2", "mode": "linear_probe", "image_size": 96,
        "classes": ["cat", "dog"], "train_examples": 240, "eval_examples": 60,
        "metrics": {"accuracy": 0.15000000596046448, "macro_f1": 0.2,
                    "per_class": {"dog": {"precision": 0.1, "recall": 0.05, "f1": 0.0667, "support": 30},
                                  "cat": {"precision": 0.5, "recall": 0.25, "f1": 1 / 3, "support": 30}}},
        "blessed": False,
        "blessing": {"rule": "accuracy above 50.00%, always predicting 'cat' (most frequent class)"},
        "skipped_files": [{"path": "x", "reason": "empty file"},
                          {"path": "y", "reason": "truncated or corrupt JPEG", "detail": "jpeg::..."},
                          {"path": "z", "reason": "truncated or corrupt JPEG"}],
        "ignored_files": 3, "ignored_files_list": "/r/examples/ignored_files.json",
        "timings_s": {"Pusher": 0.5, "Trainer": 80.0, "ImageExampleGen": 3.0, "Evaluator": 20.0,
                      "total_wall": 130.0},
        "artifacts": {"ImageExampleGen": {"examples": ["/r/ImageExampleGen/examples/1"]},
                      "Trainer": {"model": ["/r/Trainer/model/5"]}},
        "pushed_model_dir": None,
    }


def test_result_block_is_readable(tmp_path):
    from tfx_transfer.pipeline.cli.report import result_block

    text = result_block(_summary(tmp_path), str(tmp_path))
    assert "accuracy 15.00 %" in text and "0.15000000596" not in text
    assert "macro F1 20.00 %" in text and "top-5" not in text  # 2 classes: no top-5
    assert "NOT blessed: the bar was accuracy above 50.00%" in text
    assert "cat" in text and "25.0 %" in text  # per-class recall
    assert "skipped 3 files (2 truncated or corrupt JPEG, 1 empty file): " \
        "/r/ImageExampleGen/examples/1/skipped_files.json" in text
    assert "ignored 3 files that are not images by name (not counted as bad): " \
        "/r/examples/ignored_files.json" in text
    table = [l.split()[0] for l in text.splitlines() if l.startswith("    ")]
    assert table == ["class", "cat", "dog"]
    timing = next(l for l in text.splitlines() if l.strip().startswith("time:"))
    assert timing.index("ImageExampleGen") < timing.index("Trainer") < timing.index("Evaluator") \
        < timing.index("Pusher") and "total 2 min 10 s" in timing
    assert "/r/Trainer/model/5  (not pushed)" in text
    assert os.path.join(str(tmp_path), "logs", "run.log") in text


def test_blessing_bar_is_the_majority_class(tmp_path):
    from tfx_transfer.pipeline import blessing
    from tfx_transfer.pipeline.config import RunConfig

    for split, counts in (("train", {"a": 6, "b": 2}), ("test", {"a": 3, "b": 7})):
        for cls, n in counts.items():
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                (tmp_path / split / cls / f"{i}.jpg").write_bytes(b"x")
    rule = blessing.threshold(RunConfig.from_dict(dict(data=str(tmp_path))))
    # 'a' is the training split's most frequent class; always predicting it scores 3/10 on test.
    assert rule["majority_class"] == "a" and rule["majority_accuracy"] == pytest.approx(0.3)
    assert rule["threshold"] > 0.3 and "'a'" in rule["rule"]
    assert blessing.threshold(RunConfig.from_dict(dict(data=str(tmp_path), min_accuracy=0.8)))["threshold"] == 0.8
    assert blessing.threshold(RunConfig.from_dict(dict(data=str(tmp_path), bless_over_majority=False)))[
        "threshold"] == 0.0
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "train.tfrecord").write_bytes(b"")
    unknown = blessing.threshold(RunConfig.from_dict(dict(data=str(tmp_path / "rec"))))
    assert unknown["threshold"] == 0.0 and "counts unknown" in unknown["rule"]


# --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.e2e
def test_piped_run_prints_few_lines_and_logs_everything(tmp_path):
    """The demo data (400 images), piped: under 80 lines, the full log in run.log."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "tfx_transfer.pipeline.cli", "run", "--data", SAMPLE,
                           "--weights", "none", "--image-size", "32", "--epochs", "3",
                           # epochs to show: the default probe is solved, not trained by epochs
                           "--set", "probe_solver=sgd", "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=REPO, env=_env(), timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) <= 80, proc.stdout
    assert sum("probe epoch" in l and "val_accuracy" in l for l in lines) == 3  # each epoch once
    for component in ("ImageExampleGen", "Transform", "Trainer", "Evaluator", "Pusher"):
        assert any(l.strip().startswith(component) for l in lines), component
    assert any(l.strip().startswith("accuracy ") and "%" in l for l in lines)
    log = open(out / "logs" / "run.log").read().splitlines()
    assert len(log) > 10 * len(lines)  # TFX's own output is kept, just not shown


def test_files_that_are_not_images_are_ignored_by_name_and_listed(tmp_path):
    from tfx_transfer.components import image_example_gen
    from tfx_transfer.pipeline import preflight
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "1.jpg").write_bytes(b"x")
    for name in ("notes.txt", "README.md", "labels.csv", "meta.json", ".DS_Store"):
        (tmp_path / "cat" / name).write_text("x")
    (tmp_path / "notes").mkdir()  # a class folder holding notes only is not a class
    (tmp_path / "notes" / "todo.txt").write_text("x")
    assert preflight.class_counts(str(tmp_path)) == {"all": {"cat": 1, "dog": 1, "notes": 0}}
    listed, ignored = image_example_gen.list_images(str(tmp_path), "*/*")
    assert sorted(os.path.relpath(p, tmp_path) for p in listed) == ["cat/1.jpg", "dog/1.jpg"]
    assert sorted(os.path.basename(p) for p in ignored) == [
        ".DS_Store", "README.md", "labels.csv", "meta.json", "notes.txt", "todo.txt"]


def test_compare_table_reads_like_the_result_block():
    from tfx_transfer.pipeline.cli.report import leaderboard_table

    rows = [{"backbone": "MobileNetV2", "mode": "linear_probe", "unfreeze_groups": 0,
             "image_size": 96, "accuracy": 0.7123, "top5_accuracy": 0.97, "macro_f1": 0.7,
             "train_s": 75.0, "params": 2270794, "blessed": True},
            {"backbone": "MobileNet", "mode": "lp_ft", "unfreeze_groups": 2, "image_size": None,
             "accuracy": 0.8, "top5_accuracy": None, "macro_f1": None, "train_s": None,
             "params": 3239114, "blessed": False}]
    lines = leaderboard_table(rows).splitlines()
    assert lines[1].split()[:3] == ["MobileNet", "lp_ft", "2"]  # best first
    assert "80.00 %" in lines[1] and "3.24 M" in lines[1]
    assert "–" in lines[2].split()[2] and "71.23 %" in lines[2] and "2.27 M" in lines[2]
    assert "1 min 15 s" in lines[2]


@pytest.mark.e2e
def test_linear_probe_projector_embeds_once_and_draws_once(tiny_run):
    """The projector reuses "after" as "before" for a linear probe; a rebuilt "before"
    (the backbone the Trainer started from) would be the same numbers."""
    import glob

    import numpy as np
    from PIL import Image

    from tfx_transfer.components import embedding_projector as E

    _, summary = tiny_run
    proj = summary["projector"]
    assert proj["before_equals_after"] is True and proj["after"] == proj["before"]
    arts = summary["artifacts"]
    model_uri, graph_uri = arts["Trainer"]["model"][0], arts["Transform"]["transform_graph"][0]
    files = glob.glob(os.path.join(arts["ImageExampleGen"]["examples"][0], "Split-eval", "*"))
    serialized, _ = E.read_sample(files, 20, 0)
    _, _, images = E.parse_sample(serialized)
    after, _ = E.embed_after(model_uri, serialized)
    before, _ = E.embed_before(model_uri, graph_uri, images, 42)
    assert np.allclose(before, after, rtol=1e-5, atol=1e-6 * float(np.abs(before).max()))
    width, height = Image.open(proj["files"]["figure"]).size
    assert height < width / 2  # one row of projections, not before and after


def test_heartbeat_lines_thin_out_as_a_component_runs_on():
    from tfx_transfer.pipeline.cli.progress import ProgressView

    out, clock = io.StringIO(), FakeClock()
    view = ProgressView(out, live=False, clock=clock)
    _component(view, "Trainer", "start")
    for _ in range(600):  # ten silent minutes, ticked every second
        clock.t += 1
        view.tick()
    beats = [l for l in out.getvalue().splitlines() if "running" in l]
    assert 4 <= len(beats) <= 6 and beats[0].endswith("running 30.0 s")


def test_majority_bar_applies_to_the_whole_eval_set_not_each_class(tmp_path):
    """A 23 % model with one class at 0 % is blessed on a 10-class balanced set; 5 % is not."""
    from tensorflow_model_analysis.evaluators import metrics_validator
    from tensorflow_model_analysis.metrics import metric_types

    from tfx_transfer.pipeline.config import RunConfig
    from tfx_transfer.pipeline.pipeline import eval_config

    config = eval_config(RunConfig.from_dict(dict(data=SAMPLE)), 10)
    # First run: no baseline, so (as TFX's Evaluator does) no change threshold.
    config.metrics_specs[0].metrics[0].ClearField("threshold")
    key = metric_types.MetricKey(name="sparse_categorical_accuracy", example_weighted=False)

    def ok(slice_key, accuracy):
        return metrics_validator.validate_metrics((slice_key, {key: accuracy}), config).validation_ok

    assert ok((), 0.23) and not ok((), 0.05) and not ok((), 0.10)  # a tie is not a win
    assert ok((("label", b"cat"),), 0.0)


def test_evaluator_and_projector_phases_show_counts_and_seconds():
    """Piped: the Evaluator's inference as count/total with rate and ETA every
    10 s; each projector step one finished line with its seconds, no start line."""
    from tfx_transfer.pipeline.cli.progress import ProgressView

    out, clock = io.StringIO(), FakeClock()
    view = ProgressView(out, live=False, totals={"eval": 100}, clock=clock)
    _component(view, "Evaluator", "start")
    for i in range(1, 101):  # one image every 0.3 s
        clock.t += 0.3
        view.emit(_record("x", progress=dict(task="evaluating", done=i, total=None, unit="img",
                                             split="eval")))
    _component(view, "Evaluator", "finish")
    _component(view, "EmbeddingProjector", "start")
    for step, took in (("embedding (trained model)", 2.0), ("PCA after", 0.5), ("UMAP after", 12.0)):
        view.emit(_record("x", progress=dict(task=step, done=0, total=100, unit="points",
                                             started=True)))
        clock.t += took
        view.emit(_record("x", progress=dict(task=step, done=100, total=100, unit="points",
                                             finished=True, seconds=took,
                                             rate=step.startswith("embedding"))))
    _component(view, "EmbeddingProjector", "finish")
    view.emit(_record("x", progress=dict(task="run 2/4: MobileNet_lp_ft_u1", done=0, heading=True)))
    lines = out.getvalue().splitlines()
    assert lines[-1] == "run 2/4: MobileNet_lp_ft_u1"  # compare's heading before a run
    evaluating = [l for l in lines if "evaluating" in l]
    assert 2 <= len(evaluating) <= 3 and all("/100 img" in l and "ETA" in l for l in evaluating)
    for step, took in (("PCA after", "0.5 s"), ("UMAP after", "12.0 s")):
        mine = [l for l in lines if step in l]
        assert len(mine) == 1 and mine[0].endswith(took) and "100 points" in mine[0], lines
        assert "/s" not in mine[0]  # all points at once: a rate would mean nothing
    assert "50.0 points/s" in next(l for l in lines if "embedding" in l)
    assert lines[-2].split()[:2] == ["EmbeddingProjector", "done"]


def test_component_hooks_count_tfma_predictions_only():
    """The hook around TFMA's inference DoFn counts the predictions pass, not
    the transform_features pass that uses the same DoFn."""
    import numpy as np
    from tensorflow_model_analysis import constants
    from tensorflow_model_analysis.utils import model_util

    from tfx_transfer.modules.progress_events import PROGRESS_LOGGER
    from tfx_transfer.pipeline.cli.progress import component_hooks

    class Fake:
        def __init__(self, keypath):
            self._output_keypath = keypath

    seen = []

    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.progress)

    logger, handler = logging.getLogger(PROGRESS_LOGGER), Catch()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    real = model_util.ModelSignaturesDoFn._batch_reducible_process
    model_util.ModelSignaturesDoFn._batch_reducible_process = lambda self, batch: [batch]
    try:
        with component_hooks():
            hooked = model_util.ModelSignaturesDoFn._batch_reducible_process
            batch = {constants.INPUT_KEY: np.array([b"a", b"b", b"c"])}
            hooked(Fake([constants.TRANSFORMED_FEATURES_KEY]), batch)
            hooked(Fake([constants.PREDICTIONS_KEY]), batch)
            hooked(Fake([constants.PREDICTIONS_KEY]), batch)
        assert model_util.ModelSignaturesDoFn._batch_reducible_process is not hooked  # restored
    finally:
        model_util.ModelSignaturesDoFn._batch_reducible_process = real
        logger.removeHandler(handler)
    assert [(e["task"], e["done"], e["split"]) for e in seen] == [
        ("evaluating", 3, "eval"), ("evaluating", 6, "eval")]
