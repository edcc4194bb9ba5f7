import pytest

from tfx_transfer.pipeline.config import ConfigError, RunConfig


def flat(**values):
    return RunConfig.from_dict(values)


def test_defaults_are_valid():
    cfg = flat(data="x")
    assert cfg.training.mode == "linear_probe" and cfg.deploy.resolved_serving_dir.endswith("serving")
    # Resolved once: every reader sees the backbone's input size.
    assert cfg.model.image_size == 224


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
    ("weights", "", "weights"),
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
        flat(data="x", **{field: value})


def test_images_pinned_by_digest_and_pod_sizes_are_accepted():
    pinned = "registry.example.com/ml/tfx-transfer@sha256:" + "0123456789abcdef" * 4
    cfg = flat(data="x", image=pinned, tfjob_workers=2, tfjob_cpu="500m",
               tfjob_memory="2.5Gi", tfjob_tmp_size="10G")
    assert cfg.deploy.image == pinned
    assert cfg.data.image_budget() == {"max_pixels": 4096 * 4096, "max_frames": 256,
                                  "max_decoded_bytes": 256 << 20}


def test_fine_tune_needs_unfrozen_groups():
    with pytest.raises(ConfigError, match="unfreeze_groups"):
        flat(data="x", mode="fine_tune", unfreeze_groups=0)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("data: imgs\nbackbone: ResNet50\nepochs: 3\n")
    cfg = RunConfig.load(str(p), epochs=5, mode=None)
    assert (cfg.model.backbone, cfg.training.epochs, cfg.training.mode) == \
        ("ResNet50", 5, "linear_probe")


def test_yaml_in_sections(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("data: {data: imgs}\nmodel: {backbone: ResNet50, image_size: 64}\n"
                 "training: {epochs: 3}\n")
    cfg = RunConfig.load(str(p))
    assert (cfg.data.data, cfg.model.backbone, cfg.model.image_size, cfg.training.epochs) == \
        ("imgs", "ResNet50", 64, 3)
    with pytest.raises(ConfigError, match="epochs"):
        RunConfig.from_dict({"model": {"epochs": 3}})  # a field in the wrong section


def test_config_round_trips_through_custom_config():
    from tfx_transfer.modules.config import ModuleConfig

    cfg = flat(data="x", backbone="ResNet50", epochs=3, augment=["flip"])
    back = ModuleConfig.from_custom_config(cfg.module.to_json())
    assert back == cfg.module and back.model.image_size == 224
    with pytest.raises(ConfigError, match="'epoch' \\(did you mean 'epochs'"):
        ModuleConfig.from_custom_config({"training": {"epoch": 3}})


def test_missing_weights_file_is_rejected_before_running(capsys, tmp_path):
    from conftest import SAMPLE
    from tfx_transfer.pipeline import cli

    assert cli.main(["run", "--data", SAMPLE, "--weights", "/no/such/file.h5",
                     "--output", str(tmp_path / "out")]) == 2
    assert "/no/such/file.h5" in capsys.readouterr().err


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
    from tfx_transfer.pipeline import cli

    assert cli.main(["run", "--data", "nowhere", "--epochs", "0"]) == 2
    assert "'epochs'" in capsys.readouterr().err


def test_cli_lists_backbones(capsys):
    from tfx_transfer.pipeline import cli

    assert cli.main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "ConvNeXtXLarge" in out and "EfficientNetV2S" in out and "caffe" in out
