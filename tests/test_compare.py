"""tfx-transfer compare: combinations, leaderboard files, and a real run."""
import csv
import json
import os

import pytest

from conftest import tiny_config
from tfx_transfer.pipeline.runners import compare


def test_combinations_expand_unfreeze_depths_only_for_fine_tuning():
    base = tiny_config("/tmp/x")
    configs = compare.combinations(base, ["MobileNetV2", "ResNet50"], ["linear_probe", "fine_tune"],
                                   [1, 3], [])
    names = [c.deploy.model_name for c in configs]
    assert names == ["mobilenetv2-linear_probe", "mobilenetv2-fine_tune-u1", "mobilenetv2-fine_tune-u3",
                     "resnet50-linear_probe", "resnet50-fine_tune-u1", "resnet50-fine_tune-u3"]
    assert [c.training.unfreeze_groups for c in configs if c.training.mode == "fine_tune"] == [1, 3, 1, 3]
    assert all(c.deploy.output == base.deploy.output for c in configs), "one run dir: TFX caching across runs"


def test_leaderboard_files(tmp_path):
    rows = [dict(backbone="A", mode="linear_probe", unfreeze_groups=0, image_size=32, accuracy=0.5,
                 top5_accuracy=0.9, macro_f1=0.4, train_s=10.0, params=100, trainable_params=10,
                 blessed=True),
            dict(backbone="B", mode="fine_tune", unfreeze_groups=2, image_size=32, accuracy=0.7,
                 top5_accuracy=0.95, macro_f1=0.6, train_s=30.0, params=200, trainable_params=50,
                 blessed=True)]
    paths = compare.write_leaderboard(rows, str(tmp_path))
    assert all(os.path.exists(p) for p in paths.values())
    ranked = list(csv.DictReader(open(paths["csv"])))
    assert [r["backbone"] for r in ranked] == ["B", "A"], "sorted by accuracy"
    assert "| B | fine_tune | 2 |" in open(paths["md"]).read()


def test_row_takes_training_time_from_the_report_when_the_trainer_was_cached():
    config = tiny_config("/tmp/x").replace(mode="lp_ft")
    summary = {"metrics": {"accuracy": 0.5}, "timings_s": {"Trainer": 0.0},
               "component_states": {"Trainer": "CACHED"},
               "training": {"phases": [
                   {"phase": "feature_extraction", "seconds": 90.5, "images_per_s": 660.0},
                   {"phase": "probe", "seconds": 12.0, "images_per_s": 40000.0},
                   {"phase": "fine_tune", "seconds": 145.0, "images_per_s": 690.0}]}}
    r = compare.row(config, summary)
    assert r["train_s"] == 247.5, "a cached Trainer still cost its training time"
    assert r["extract_img_s"] == 660.0 and r["train_img_s"] == 690.0


@pytest.mark.slow
@pytest.mark.e2e
def test_compare_runs_other_backbones_and_reuses_the_cache(tmp_path, capsys):
    from tfx_transfer.pipeline import cli

    rc = cli.main(["compare", "--data", tiny_config(tmp_path).data.data, "--weights", "none",
                   "--backbones", "MobileNetV3Small,EfficientNetB0", "--modes", "linear_probe,fine_tune",
                   "--unfreeze", "1", "--image-size", "32", "--epochs", "1", "--fine-tune-epochs", "1",
                   "--no-projector", "--output", str(tmp_path / "cmp")])
    assert rc == 0
    rows = json.load(open(tmp_path / "cmp" / "leaderboard.json"))
    assert {(r["backbone"], r["mode"]) for r in rows} == {
        ("MobileNetV3Small", "linear_probe"), ("MobileNetV3Small", "fine_tune"),
        ("EfficientNetB0", "linear_probe"), ("EfficientNetB0", "fine_tune")}
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["params"] > r["trainable_params"] > 0
    # ExampleGen ran once; later combinations reused it through TFX's cache
    states = [json.load(open(tmp_path / "cmp" / "runs" / d / "summary.json"))["component_states"]
              for d in sorted(os.listdir(tmp_path / "cmp" / "runs"))]
    assert sum(s["ImageExampleGen"] == "CACHED" for s in states) == 3
    assert os.path.exists(tmp_path / "cmp" / "leaderboard.png")


def test_image_size_flag_applies_to_every_combination(tmp_path):
    """`compare --image-size 96` ran every combination at the backbone's default
    size (224) before: the flag reached the base config only."""
    from tfx_transfer.pipeline import cli
    from tfx_transfer.pipeline.cli.compare import _given_size
    from tfx_transfer.pipeline.cli.options import config_from_args

    data = tiny_config(tmp_path).data.data
    (tmp_path / "sized.yaml").write_text("model:\n  image_size: 64\n")

    def sizes(*flags):
        args = cli.build_parser().parse_args(["compare", "--data", data, *flags])
        return _given_size(args, config_from_args(args))

    assert sizes("--image-size", "96") == [96]
    assert sizes("--set", "image_size=128") == [128]
    assert sizes("--config", str(tmp_path / "sized.yaml")) == [64]
    assert sizes() == []  # each backbone at its own default size
