"""Fuzzing the console scripts (hypothesis, derandomized: the same examples on every run): random
bad settings, as flags and as config-file values, and damaged files (checkpoints, IDX data,
metrics.json) always end in exit status 2 and one line naming the setting or the file: never a
traceback, never a write to the run folder, never the start of training (``Reporter.start`` is
made to fail, which would show as a bug)."""

import dataclasses
import json
import math
import shutil

import pytest
from helpers import TINY, TINY_SETTINGS, call, finished_run, idx_arrays, snapshot, write_idx_root
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dgm import ops
from dgm.checkpoint import checkpoint_path
from dgm.cli import data, results, train
from dgm.config import TrainConfig, kind, rule
from dgm.data.datasets import IDX_FILES
from dgm.reporting import Reporter

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                phases=(Phase.explicit, Phase.generate, Phase.shrink),  # no explain phase: it writes files
                suppress_health_check=[HealthCheck.too_slow])
NAMES = [f.name for f in dataclasses.fields(TrainConfig)]
WORDS = st.text(st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=12)
JUNK = st.one_of(st.booleans(), st.text(max_size=8), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished run, an MNIST root of IDX files, and then no run can start."""
    base = tmp_path_factory.mktemp("fuzz")
    run = finished_run(tmp_path_factory, base / "run")
    write_idx_root(base / "data" / "MNIST" / "raw", idx_arrays())

    def refuse_start(*args, **kwargs):
        raise AssertionError("a fuzz case reached the start of training")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Reporter, "start", refuse_start)
        yield {"base": base, "run": run, "data": base / "data"}


def _outside(r, base):
    """Numbers outside the range of rule ``r`` (of a setting of type ``base``)."""
    options = []
    if r.low is not None:
        options.append(st.integers(max_value=math.ceil(r.low) - (0 if r.low_open else 1)) if base is int else
                       st.floats(max_value=r.low, exclude_max=not r.low_open, allow_nan=False, allow_infinity=False))
    if r.high is not None:
        options.append(st.integers(min_value=math.floor(r.high) + 1) if base is int else
                       st.floats(min_value=r.high, exclude_min=not r.high_open, allow_nan=False,
                                 allow_infinity=False))
    if base is float:
        options.append(st.sampled_from([math.inf, -math.inf, math.nan]))
    return options


def bad_values(name):
    """JSON values that setting ``name`` refuses: wrong types and numbers out of range."""
    base, nullable = kind(name)
    r = rule(name)
    wrong = [JUNK.filter(lambda v: type(v) is not base and not (base is float and type(v) is int))]
    if not nullable:
        wrong.append(st.none())
    if base in (int, float):
        wrong += _outside(r, base)
    if base is int:
        wrong.append(st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not v.is_integer()))
    if base is str and r.choices:
        wrong.append(WORDS.filter(lambda v: v not in r.choices))
    if name == "backend":
        wrong.append(WORDS.filter(lambda v: v not in ops.CHOICES))
    return st.one_of(wrong)


def bad_words(name):
    """Command-line words that setting ``name`` refuses (``None``: a switch, which takes none)."""
    base = kind(name)[0]
    r = rule(name)
    if base is bool:
        return None
    if base in (int, float):
        numbers = st.one_of(_outside(r, base)).map(str) if _outside(r, base) else st.nothing()
        return st.one_of(numbers, st.sampled_from(["", "x", "1.5e", "0x10", "--"]),
                         *([st.sampled_from(["1.5", "1e3", "nan", "inf"])] if base is int else []))
    if r.choices:
        return WORDS.filter(lambda v: v not in r.choices)
    return {"device": st.sampled_from(["tpu", "cuda:x", "meta", "gpu", ""]),
            "backend": WORDS.filter(lambda v: v not in ops.CHOICES)}.get(name, st.just(""))


FLAG_CASES = st.sampled_from([n for n in NAMES if bad_words(n) is not None]).flatmap(
    lambda name: st.tuples(st.just(name), bad_words(name)))
FILE_CASES = st.sampled_from(NAMES).flatmap(lambda name: st.tuples(st.just(name), bad_values(name)))
# Settings that are each fine and wrong together with the data set (mnist5k: 10 classes).
COMBINATIONS = st.one_of(
    st.sampled_from([3, 4, 6, 7, 8, 9, 11]).map(lambda k: ("classes_per_task", {"classes_per_task": k})),
    st.tuples(st.sampled_from([1, 2, 5, 10]), st.integers(1, 5)).map(
        lambda c: ("tasks", {"classes_per_task": c[0], "tasks": 10 // c[0] + c[1]})),
    st.integers(1, 9).map(lambda nz: ("nz", {"nz": nz})),
    st.integers(1, 64).filter(lambda s: s != 32).map(lambda s: ("image_size", {"arch": "dcgan", "image_size": s})))


def _settings_file(world, values):
    """A config file of the tiny run's settings, its --out a folder that must never appear, and ``values``."""
    path = world["base"] / "settings.json"
    path.write_text(json.dumps({**TINY_SETTINGS, "out": str(world["base"] / "never"), **values}))
    return path


def _refused(world, argv, *names):
    """dgm-train refuses ``argv`` (which sets --out, or whose config file does) in one line naming
    ``names``, and the run folder never appears."""
    out = world["base"] / "never"
    code, _, err = call(train.main, argv)
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("dgm-train: error: ") and err.count("\n") == 1, err
    for name in names:
        assert name in err, (name, err)
    assert not out.exists()


@FUZZ
@given(case=FLAG_CASES)
def test_bad_flags(world, case):
    name, word = case
    flag = "--" + name.replace("_", "-")
    argv = [*TINY, "--out", world["base"] / "never", f"{flag}={word}"]
    _refused(world, argv, flag)  # argv sets --out


@FUZZ
@given(case=FILE_CASES)
def test_bad_config_file_values(world, case):
    name, value = case
    path = _settings_file(world, {name: value})
    _refused(world, ["--config", path], f"{path}: {name} = ")


@FUZZ
@given(key=WORDS.filter(lambda k: k.replace("-", "_") not in NAMES), value=JUNK)
def test_unknown_config_keys(world, key, value):
    path = _settings_file(world, {key: value})
    _refused(world, ["--config", path], f"{path}: {key.replace('-', '_')} = ", "not a setting")


@FUZZ
@given(case=COMBINATIONS, as_file=st.booleans())
def test_inconsistent_combinations(world, case, as_file):
    name, values = case
    if as_file:
        path = _settings_file(world, values)
        _refused(world, ["--config", path], f"{path}: {name} = ")
    else:
        flags = [w for k, v in values.items() for w in ("--" + k.replace("_", "-"), str(v))]
        _refused(world, [*TINY, *flags, "--out", world["base"] / "never"], "--" + name.replace("_", "-") + " = ")


def _damaged(original: bytes, draw_cut, junk):
    return original[:draw_cut % max(len(original), 1)] if junk is None else junk


@FUZZ
@given(both=st.booleans(), cut=st.integers(0, 10**9), junk=st.none() | st.binary(max_size=3000))
def test_damaged_checkpoints(world, both, cut, junk):
    """The latest checkpoint damaged (and the one before it, or not: then the message offers it)."""
    run = world["run"]
    paths = [checkpoint_path(run, 1), checkpoint_path(run, 0)][:1 + both]
    originals = [path.read_bytes() for path in paths]
    for path, original in zip(paths, originals):
        path.write_bytes(_damaged(original, cut, junk))
    try:
        before = snapshot(run)
        _refused(world, [*TINY, "--tasks", "2", "--out", run, "--resume"], str(paths[0]))
        assert snapshot(run) == before
    finally:
        for path, original in zip(paths, originals):
            path.write_bytes(original)


@FUZZ
@given(which=st.sampled_from(range(4)), cut=st.integers(0, 10**9), junk=st.none() | st.binary(max_size=400),
       label=st.integers(10, 255), at=st.integers(0, 10**9))
def test_damaged_idx_files(world, which, cut, junk, label, at):
    path = world["data"] / "MNIST" / "raw" / IDX_FILES[which]
    original = path.read_bytes()
    if which % 2 and junk is None and cut % 2:  # a label file with one label out of range
        pos = 8 + at % (len(original) - 8)
        damaged = original[:pos] + bytes([label]) + original[pos + 1:]
    else:
        damaged = _damaged(original, cut, junk)
    path.write_bytes(damaged)
    try:
        code, _, err = call(data.main, ["info", "--dataset", "mnist", "--root", world["data"]])
        assert code == 2 and err.startswith("dgm-data: error: ") and err.count("\n") == 1 and str(path) in err, err
        _refused(world, [*TINY, "--dataset", "mnist", "--data-root", world["data"], "--out", world["base"] / "never"],
                 str(path))
    finally:
        path.write_bytes(original)


METRICS_DAMAGE = st.one_of(
    st.integers(0, 10**9).map(lambda cut: ("cut", cut)),
    st.binary(max_size=300).map(lambda junk: ("bytes", junk)),
    st.tuples(st.sampled_from(["config", "accuracy_matrix", "A", "generator_params", "wall_time_s", "forgetting"]),
              st.one_of(st.booleans(), st.text(max_size=4), st.sampled_from([math.nan, math.inf]))).map(
        lambda kv: ("field", kv)),
    st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=4),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                 max_leaves=8).map(lambda value: ("json", value)))


@FUZZ
@given(damage=METRICS_DAMAGE)
def test_damaged_metrics_json(world, damage):
    folder = world["base"] / "results"
    if not folder.exists():
        shutil.copytree(world["run"], folder)
    path = folder / "metrics.json"
    original = (world["run"] / "metrics.json").read_text()
    how, what = damage
    if how == "cut":
        text = original.rstrip()
        path.write_text(text[:what % len(text)])
    elif how == "bytes":
        path.write_bytes(what)
    elif how == "field":
        metrics = json.loads(original)
        metrics[what[0]] = what[1]
        path.write_text(json.dumps(metrics))
    else:
        path.write_text(json.dumps(what))
    code, _, err = call(results.main, [folder])
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("dgm-results: error: ") and err.count("\n") == 1 and str(path) in err, err
