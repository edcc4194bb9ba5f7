"""The local server's version loader heals (issue #12 item 5): a failed version
is retried when any of its files changes, the newest loadable version serves
within one poll when the served one goes away or fails, and only ASCII-digit
directory names are versions. Polls are driven by hand, so "within one poll"
is checked exactly."""
import os
import shutil

import pytest

from tfx_transfer.modules import contract
from tfx_transfer.serving import warmup
from tfx_transfer.serving.server import State, VersionManager
from test_serving import build_standin, push


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_standin(str(tmp_path_factory.mktemp("standin") / "m"))


def served(manager):
    return sorted(manager.loaded())


def state(manager, version):
    return State.Name(manager.status()[version][0])


def test_version_whose_variables_land_after_saved_model_pb_is_loaded(model, tmp_path):
    base = tmp_path / "m"
    target = base / "1"
    shutil.copytree(model, target, ignore=shutil.ignore_patterns("variables"))
    manager = VersionManager(str(base), "m")
    manager.poll_once()
    assert served(manager) == [] and state(manager, 1) == "END"
    assert "load failed" in manager.status()[1][2]
    manager.poll_once()  # nothing changed: not retried
    assert state(manager, 1) == "END"
    shutil.copytree(os.path.join(model, "variables"), target / "variables")
    manager.poll_once()
    assert served(manager) == [1] and state(manager, 1) == "AVAILABLE"
    assert manager.status()[1][1:] == (0, "")


def test_failed_version_is_retried_when_a_file_other_than_saved_model_pb_changes(model, tmp_path):
    base = str(tmp_path / "m")
    push(model, base, 1)
    target = push(model, base, 2)
    # A warmup file that cannot be read fails the load, as in TF Serving.
    os.makedirs(os.path.join(target, contract.WARMUP_DIR))
    with open(warmup.warmup_path(target), "wb") as f:
        f.write(b"not a TFRecord")
    manager = VersionManager(base, "m")
    manager.poll_once()
    assert served(manager) == [1] and state(manager, 2) == "END"
    os.remove(warmup.warmup_path(target))
    manager.poll_once()
    assert served(manager) == [2] and state(manager, 1) == "END"


def test_older_version_serves_within_one_poll_when_the_served_one_is_removed(model, tmp_path):
    base = str(tmp_path / "m")
    for v in (1, 2, 3):
        push(model, base, v)
    manager = VersionManager(base, "m")
    manager.poll_once()
    assert served(manager) == [3]
    shutil.rmtree(os.path.join(base, "3"))
    manager.poll_once()
    assert served(manager) == [2] and state(manager, 3) == "END"
    # The served version's saved_model.pb gone counts as gone too.
    os.remove(os.path.join(base, "2", "saved_model.pb"))
    manager.poll_once()
    assert served(manager) == [1]


def test_newest_loadable_version_serves_when_newer_ones_fail(model, tmp_path):
    base = str(tmp_path / "m")
    push(model, base, 1)
    push(model, base, 2)
    manager = VersionManager(base, "m")
    manager.poll_once()
    assert served(manager) == [2]  # version 1 was never loaded
    for v in (3, 4):  # two broken pushes, then the served version 2 removed
        os.makedirs(os.path.join(base, str(v)))
        with open(os.path.join(base, str(v), "saved_model.pb"), "wb") as f:
            f.write(b"not a SavedModel")
    shutil.rmtree(os.path.join(base, "2"))
    manager.poll_once()
    assert served(manager) == [1]
    assert [state(manager, v) for v in (4, 3, 2, 1)] == ["END", "END", "END", "AVAILABLE"]
    # With two versions kept, the two newest loadable ones serve.
    push(model, base, 5)
    two = VersionManager(base, "m", num_versions=2)
    two.poll_once()
    assert served(two) == [1, 5]


@pytest.mark.parametrize("name", ["\u00b2", "\u0661", "1a", "v1", "-1", " 1"])
def test_only_ascii_digit_directories_are_versions(model, tmp_path, name):
    base = str(tmp_path / "m")
    push(model, base, 1)
    # Unicode digits (superscript two, Arabic-Indic one) pass str.isdigit() but not int().
    shutil.copytree(os.path.join(base, "1"), os.path.join(base, name))
    manager = VersionManager(base, "m")
    assert manager.on_disk() == {1: f"{base}/1"}
    manager.poll_once()
    assert served(manager) == [1]
    push(model, base, 2)
    manager.poll_once()
    assert served(manager) == [2]
