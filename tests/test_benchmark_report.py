"""benchmarks/report.py on the JSON of a real pytest-benchmark run: a tiny suite run in a
subprocess through the suite's own conftest (its device and version record), then the report's
results file and Markdown table checked against the figures that JSON holds."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("benchmark_report", ROOT / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(report)

# Two suites sharing a group (as the Triton and extension suites do), and groups of each ratio kind.
TINY = '''
import pytest
import torch

WORK = {"reference": 4000, "triton": 1000, "extension": 2000, "limit": 500, "loop": 3000, "one-pass": 1000,
        "realloc": 800, "expand": 400}


@pytest.mark.parametrize("impl", IMPLS)
def test_fused(benchmark, impl):
    benchmark.group = "fused-8"
    x = torch.ones(WORK[impl])
    benchmark(lambda: torch.cumsum(x, 0))


@pytest.mark.parametrize("impl", ["loop", "one-pass"])
def test_replay(benchmark, impl):
    benchmark.group = "replay-8"
    x = torch.ones(WORK[impl])
    benchmark(lambda: torch.cumsum(x, 0))


@pytest.mark.parametrize("impl", ["expand", "realloc"])
def test_growth(benchmark, impl):
    benchmark.group = "growth-8"
    benchmark(lambda: torch.zeros(WORK[impl]))


def test_alone(benchmark):
    benchmark.group = "alone-8"
    benchmark(lambda: torch.zeros(8))
'''


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory) -> Path:
    suite = tmp_path_factory.mktemp("suite")
    shutil.copy(ROOT / "benchmarks" / "conftest.py", suite / "conftest.py")
    (suite / "bench_tiny.py").write_text('IMPLS = ["reference", "triton", "limit"]\n' + TINY)
    (suite / "bench_other.py").write_text('IMPLS = ["reference", "extension", "limit"]\n'
                                          + TINY.split("@pytest.mark.parametrize(\"impl\", [\"loop\"")[0])
    out = suite / "bench.json"
    run = subprocess.run([sys.executable, "-m", "pytest", str(suite), "--benchmark-only", "-q", "-p",
                          "no:cacheprovider", f"--benchmark-json={out}", "--benchmark-max-time=0.01",
                          "--benchmark-min-rounds=3"], check=False, cwd=suite, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def _stats(data: dict) -> dict:
    """(suite, group, impl) -> the run's own stats, read straight from the JSON."""
    return {(Path(b["fullname"].split("::")[0]).stem.removeprefix("bench_"), b["group"],
             (b["params"] or {}).get("impl", b["name"])): b["stats"] for b in data["benchmarks"]}


def test_results_file_holds_the_runs_figures_and_ratios(bench_json, tmp_path):
    out = tmp_path / "results"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(bench_json), "--out", str(out)],
                         check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    data = json.loads(bench_json.read_text())
    files = list(out.iterdir())
    device = data["machine_info"]["dgm"]["device"]
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    assert [f.name for f in files] == [f"{slug}-{data['datetime'][:10]}.json"]
    summary = json.loads(files[0].read_text())

    assert summary["device"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else device)
    assert summary["versions"]["torch"] == torch.__version__
    assert summary["versions"]["cuda"] == torch.version.cuda
    assert summary["datetime"] == data["datetime"]

    stats = _stats(data)
    seen = set()
    for group, content in summary["groups"].items():
        for column in content["columns"].values():
            key = (column["suite"], group, column["impl"])
            seen.add(key)
            for figure in ("mean", "median", "min", "rounds"):
                assert column[figure] == stats[key][figure]
    assert seen == set(stats)

    groups = summary["groups"]
    assert set(groups["fused-8"]["columns"]) == {"reference (tiny)", "triton", "limit (tiny)",
                                                  "reference (other)", "extension", "limit (other)"}
    def ratio(suite, group, num, den):
        return stats[suite, group, num]["median"] / stats[suite, group, den]["median"]

    expected = {
        ("fused-8", "reference (tiny)/triton"): ratio("tiny", "fused-8", "reference", "triton"),
        ("fused-8", "reference (other)/extension"): ratio("other", "fused-8", "reference", "extension"),
        ("fused-8", "triton/limit (tiny)"): ratio("tiny", "fused-8", "triton", "limit"),
        ("fused-8", "extension/limit (other)"): ratio("other", "fused-8", "extension", "limit"),
        ("replay-8", "loop/one-pass"): ratio("tiny", "replay-8", "loop", "one-pass"),
        ("growth-8", "realloc/expand"): ratio("tiny", "growth-8", "realloc", "expand"),
    }
    got = {(g, label): value for g, content in groups.items() for label, value in content["ratios"].items()}
    assert got == pytest.approx(expected, rel=1e-12)  # no cross-suite ratio, none for a lone column
    assert groups["alone-8"]["ratios"] == {}

    table = run.stdout
    assert device in table and data["datetime"][:10] in table and torch.__version__ in table
    rows = re.findall(r"^\| (\S+) \| (.+?) \| ([0-9.e+-]+) \|$", table, re.MULTILINE)
    assert {(g, label): float(v) for g, label, v in rows} == pytest.approx(expected, rel=5e-3)
    assert len(rows) == len(expected)


def test_refuses_a_json_without_the_device_record(bench_json, tmp_path):
    data = json.loads(bench_json.read_text())
    del data["machine_info"]["dgm"]
    stripped = tmp_path / "stripped.json"
    stripped.write_text(json.dumps(data))
    out = tmp_path / "results"
    assert report.main([str(stripped), "--out", str(out)]) == 2
    assert not out.exists()
    with pytest.raises(report.ReportError, match="benchmarks/conftest.py"):
        report.summarize(data)


def test_refuses_two_benchmarks_in_one_column(bench_json):
    data = json.loads(bench_json.read_text())
    twin = next(b for b in data["benchmarks"] if b["group"] == "replay-8")
    data["benchmarks"].append(dict(twin, name=twin["name"] + "-again"))
    with pytest.raises(report.ReportError, match="two benchmarks in column"):
        report.summarize(data)
