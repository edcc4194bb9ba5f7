import pytest

from pipeline.config import ConfigError, RunConfig


def test_defaults_are_valid():
    cfg = RunConfig(data="x")
    assert cfg.mode == "linear_probe" and cfg.resolved_serving_dir.endswith("serving")


@pytest.mark.parametrize("field,value,needle", [
    ("mode", "probe", "mode"),
    ("epochs", 0, "epochs"),
    ("epochs", "ten", "epochs"),
    ("batch_size", True, "batch_size"),
    ("learning_rate", -1.0, "learning_rate"),
    ("backbone", "ResNet51", "did you mean ResNet50"),
    ("image_size", 8, "image_size"),
    ("eval_fraction", 1.5, "eval_fraction"),
    ("dropout", 1.0, "dropout"),
    ("augment", ["flip", "mixup"], "augment"),
    ("weights", "/no/such/file.h5", "weights"),
    ("runner", "airflow", "runner"),
    ("class_groups", {"cat": 3}, "class_groups"),
])
def test_bad_values_are_rejected_naming_the_field(field, value, needle):
    with pytest.raises(ConfigError, match=needle):
        RunConfig(data="x", **{field: value})


def test_fine_tune_needs_unfrozen_groups():
    with pytest.raises(ConfigError, match="unfreeze_groups"):
        RunConfig(data="x", mode="fine_tune", unfreeze_groups=0)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("data: imgs\nbackbone: ResNet50\nepochs: 3\n")
    cfg = RunConfig.load(str(p), epochs=5, mode=None)
    assert (cfg.backbone, cfg.epochs, cfg.mode) == ("ResNet50", 5, "linear_probe")


def test_unknown_yaml_key_is_named(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("data: imgs\nepoch: 3\n")
    with pytest.raises(ConfigError, match="'epoch' \\(did you mean 'epochs'\\?\\)"):
        RunConfig.load(str(p))


def test_yaml_must_be_a_mapping(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        RunConfig.load(str(p))


def test_cli_rejects_bad_value_before_running(capsys):
    from pipeline import cli

    assert cli.main(["run", "--data", "nowhere", "--epochs", "0"]) == 2
    assert "'epochs'" in capsys.readouterr().err


def test_cli_lists_backbones(capsys):
    from pipeline import cli

    assert cli.main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "ConvNeXtXLarge" in out and "EfficientNetV2S" in out and "caffe" in out
