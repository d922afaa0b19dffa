"""Settings: one declaration per field checks type, range and combinations, wherever values come from."""

import dataclasses
import math

import pytest

from dgm.config import TrainConfig, allowed, check_setting, kind, parse_setting, rule
from dgm.errors import ConfigError


def test_every_field_is_declared_with_help():
    for f in dataclasses.fields(TrainConfig):
        assert rule(f.name).help, f.name
        assert kind(f.name)[0] in (bool, int, float, str), f.name
        check_setting(f.name, f.default)  # every default is allowed


@pytest.mark.parametrize("name, value, message", [
    ("epochs", True, "epochs = true: an integer >= 1"),             # bool is not an int
    ("epochs", 2.0, "epochs = 2.0: an integer >= 1"),
    ("download", "no", 'download = "no": true or false'),           # "no" is not a bool
    ("download", 0, "download = 0: true or false"),
    ("lr", "fast", 'lr = "fast": a finite number > 0'),             # strings are not numbers
    ("lr", math.inf, "lr = inf: a finite number > 0"),
    ("lr", 0.0, "lr = 0.0: a finite number > 0"),
    ("s_max", math.inf, "s_max = inf: a finite number >= 1, or null for "),
    ("lambda_gp", math.nan, "lambda_gp = nan: a finite number >= 0"),
    ("seed", "1", 'seed = "1": an integer in 0..4294967295'),
    ("seed", -1, "seed = -1: an integer in 0..4294967295"),
    ("beta1", 1, "beta1 = 1.0: a finite number in [0, 1)"),
    ("val_fraction", -0.1, "val_fraction = -0.1: a finite number in [0, 1)"),
    ("method", "merGAN", 'method = "merGAN": one of dgmw, dgma, joint, finetune, replay'),
    ("out", "", 'out = "": a non-empty string'),
    ("tasks", [3], "tasks = [3]: an integer >= 1, or null for all the data set has"),
    ("epochs", None, "epochs = null: an integer >= 1"),
])
def test_bad_values_are_named_with_what_is_allowed(name, value, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{name: value})
    assert str(info.value).startswith(message)
    assert info.value.setting == name


def test_ints_of_float_settings_become_floats_and_nulls_stay():
    config = TrainConfig(lr=1, s_max=None)
    assert type(config.lr) is float and config.s_max is None


@pytest.mark.parametrize("name, text, expected", [
    ("epochs", "3", 3), ("lr", "1e-3", 1e-3), ("lr", "2", 2.0), ("dataset", "mnist", "mnist"),
])
def test_command_line_words(name, text, expected):
    assert parse_setting(name, text) == expected and type(parse_setting(name, text)) is type(expected)


@pytest.mark.parametrize("name, text", [("epochs", "3.0"), ("epochs", "1e3"), ("epochs", ""), ("lr", "nan"),
                                        ("lr", "-inf"), ("lr", "fast"), ("seed", "99999999999")])
def test_bad_command_line_words(name, text):
    with pytest.raises(ConfigError, match=f"^{name} = "):
        parse_setting(name, text)


@pytest.mark.parametrize("values, message", [
    ({"classes_per_task": 3}, "classes_per_task = 3: a divisor of the 10 classes of mnist5k: 1, 2, 5, 10"),
    ({"tasks": 20}, "tasks = 20: at most 10: mnist5k has 10 classes, 1 per task"),
    ({"tasks": 6, "classes_per_task": 2}, "tasks = 6: at most 5: mnist5k has 10 classes, 2 per task"),
    ({"dataset": "imagenet50", "classes_per_task": 3}, "classes_per_task = 3: a divisor of the 50 classes"),
    ({"dataset": "imagenet50", "nz": 32}, "nz = 32: an integer >= 50"),
    ({"nz": 4}, "nz = 4: an integer >= 10"),
    ({"image_size": 28}, "image_size = 28: 32 with arch dcgan"),
    ({"arch": "resnet", "image_size": 64}, "image_size = 64: 32 with arch resnet"),
    ({"arch": "resnet", "method": "replay"}, "arch = \"resnet\": dcgan or mlp with method replay"),
])
def test_inconsistent_combinations(values, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**values)
    assert str(info.value).startswith(message)


def test_combinations_that_fit():
    assert TrainConfig(dataset="imagenet50", classes_per_task=10, nz=64).num_tasks == 5
    assert TrainConfig(arch="mlp", image_size=28, classes_per_task=5, tasks=1).num_tasks == 1


def test_resume_checks_every_setting_that_changes_results():
    saved = TrainConfig(hidden=16).to_dict()
    TrainConfig(hidden=16, out="elsewhere", device="cpu", tasks=3).check_resumable(saved, 2, "RUN")
    with pytest.raises(ConfigError, match=r"^lr = 0.1: the run in RUN was made with lr = 0.002, hidden = 16;"):
        TrainConfig(hidden=8, lr=0.1).check_resumable(saved, 2, "RUN")
    with pytest.raises(ConfigError, match="^tasks = 1: at least 2: the run in RUN has finished 2 tasks"):
        TrainConfig(hidden=16, tasks=1).check_resumable(saved, 2, "RUN")
    del saved["lambda_gp"]  # a key an older checkpoint lacks counts as its default
    TrainConfig(hidden=16).check_resumable(saved, 2, "RUN")


def test_allowed_words():
    assert allowed("val_fraction") == "a finite number in [0, 1)"
    assert allowed("fused") == "true or false"
    assert allowed("arch") == "one of dcgan, resnet, mlp"
