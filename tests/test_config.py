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
    ("max_image_pixels", 0, "max_image_pixels"),
    ("max_image_frames", "many", "max_image_frames"),
    ("tfjob_memory", "16 GB", "'tfjob_memory': '16 GB' is not a Kubernetes quantity"),
    ("tfjob_cpu", 4, "tfjob_cpu"),
    ("image", "registry.example.com/x@sha256:abc", "NAME@sha256:<64 hex digits>"),
])
def test_bad_values_are_rejected_naming_the_field(field, value, needle):
    with pytest.raises(ConfigError, match=needle):
        RunConfig(data="x", **{field: value})


def test_images_pinned_by_digest_and_pod_sizes_are_accepted():
    pinned = "registry.example.com/ml/tfx-transfer@sha256:" + "0123456789abcdef" * 4
    cfg = RunConfig(data="x", image=pinned, tfjob_workers=2, tfjob_cpu="500m",
                    tfjob_memory="2.5Gi", tfjob_tmp_size="10G")
    assert cfg.image == pinned
    assert cfg.image_budget() == {"max_pixels": 4096 * 4096, "max_frames": 256,
                                  "max_decoded_bytes": 256 << 20}


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
