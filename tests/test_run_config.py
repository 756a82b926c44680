"""The config a run keeps in its workdir: written at training, reused by evaluation, guarded on resume."""

import json

import pytest

from configs import btsegdiff, unet_baseline
from diffseg_jax import run_config
from diffseg_jax.vocabulary import ConfigError


def _trained(tmp_path, **fields):
    """A smoke U-Net config with `fields` ('a.b' -> value) set, kept in tmp_path as training keeps it."""
    config = unet_baseline.get_config("smoke")
    for path, value in fields.items():
        group, name = path.split(".")
        config[group][name] = value
    run_config.save(config, tmp_path, "configs/unet_baseline.py:smoke")
    return config


def test_evaluation_takes_the_runs_fields_and_the_command_lines_own(tmp_path):
    data = tmp_path / "cases"
    _trained(tmp_path, **{"data.root": str(data), "model.base_features": 12, "eval.batch_size": 4})
    given = unet_baseline.get_config("smoke")  # the file alone: no training override repeated
    given.eval.max_cases = 1
    resolved = run_config.for_evaluation(given, ["eval.max_cases"], run_config.load(tmp_path), str(tmp_path))
    assert resolved.data.root == str(data) and resolved.model.base_features == 12
    assert resolved.eval.batch_size == 4 and resolved.eval.max_cases == 1
    assert resolved.data.split_fractions == given.data.split_fractions  # tuples stay tuples


def test_a_config_kept_and_read_back_is_the_same_config(tmp_path):
    config = _trained(tmp_path, **{"data.slice_range": (3, 9), "train.learning_rate": 1e-3})
    again = run_config.for_evaluation(unet_baseline.get_config(""), [], run_config.load(tmp_path), "W")
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize(
    ("path", "value", "shown"),
    [("model.base_features", 16, "model.base_features=16"), ("data.image_size", 64, "data.image_size=64")],
)
def test_an_override_of_the_network_or_the_data_is_refused_naming_both_values(tmp_path, path, value, shown):
    _trained(tmp_path, **{"model.base_features": 12})
    given = unet_baseline.get_config("smoke")
    group, name = path.split(".")
    given[group][name] = value
    with pytest.raises(ConfigError) as err:
        run_config.for_evaluation(given, [path], run_config.load(tmp_path), "W")
    trained = unet_baseline.get_config("smoke")[group][name] if path != "model.base_features" else 12
    assert str(err.value).startswith(f"{shown}: the run in W was trained with {path}={trained}")
    same = unet_baseline.get_config("smoke")
    same.model.base_features = 12  # the run's own value: accepted
    run_config.for_evaluation(same, ["model.base_features"], run_config.load(tmp_path), "W")


def test_another_method_or_a_changed_network_on_resume_is_refused(tmp_path):
    _trained(tmp_path)
    saved = run_config.load(tmp_path)
    with pytest.raises(ConfigError, match="method: the run in W was trained as 'unet_baseline'"):
        run_config.for_evaluation(btsegdiff.get_config("smoke"), [], saved, "W")
    longer = unet_baseline.get_config("smoke")
    longer.train.steps = 50  # training longer is a resume
    run_config.check_resume(longer, saved, "W")
    finer = unet_baseline.get_config("smoke")
    finer.data.image_size = 48
    with pytest.raises(
        ConfigError, match="data.image_size: the run in W was trained with 32, this command gives 48"
    ):
        run_config.check_resume(finer, saved, "W")


def test_fine_tuning_builds_the_source_runs_network_unless_told_otherwise(tmp_path):
    _trained(tmp_path, **{"model.base_features": 12, "model.dropout": 0.1})
    config = unet_baseline.get_config("real")
    run_config.network_from(config, str(tmp_path), overrides=["model.dropout"])
    assert config.model.base_features == 12 and config.model.dropout == 0.0
    assert config.data.image_size == 128  # data and training stay the fine-tuning run's


def test_a_damaged_kept_config_is_one_line(tmp_path):
    (tmp_path / run_config.FILE).write_text(json.dumps({"config": {}}))
    with pytest.raises(ConfigError, match="config.json: not a saved run config"):
        run_config.load(tmp_path)


def test_the_sequences_another_folder_has_may_differ_from_the_runs(tmp_path):
    _trained(tmp_path)
    given = unet_baseline.get_config("smoke")
    given.data.available = "t1ce,flair"
    with pytest.raises(ConfigError, match="data.available"):  # the run's own cases: refused
        run_config.for_evaluation(given, ["data.available"], run_config.load(tmp_path), "W")
    given.eval.data_root = str(tmp_path / "brats2013")  # another folder's cases: what they have
    overrides = ["data.available", "eval.data_root"]
    resolved = run_config.for_evaluation(given, overrides, run_config.load(tmp_path), "W")
    assert resolved.data.available == "t1ce,flair"
