"""Turn a run's pytest-benchmark JSON into ``<out>/<device>-<date>.json`` and a Markdown table of
ratios (printed).

    pytest benchmarks/ --benchmark-only --benchmark-json BENCH.json
    python benchmarks/report.py BENCH.json [--out benchmarks/results]

Within a pytest-benchmark group the columns are the benchmarks' ``impl`` parameter. Each ratio is
the median time of one column over another's in the same group: ``reference/<fused>`` (the
speed-up of a fused column), ``<fused>/limit`` (its overhead over the unmasked op),
``fused/captured`` (the eager fused step over the same step replayed as a CUDA graph),
``loop/one-pass`` (per-task replay over one pass) and ``realloc/expand`` (reallocating a layer
over growing it). Every figure comes from the JSON; device, versions and date come from what
``benchmarks/conftest.py`` recorded in it (``machine_info["dgm"]``) and the run's own timestamp.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REFERENCE = ("reference", "frozen-reference")
# "cuda" and "frozen-cuda": the extension's columns in results JSON from before its rename.
FUSED = ("triton", "extension", "auto", "fused", "captured", "frozen-extension", "cuda", "frozen-cuda")
LIMIT = ("limit", "adam")
# (numerator columns, denominator columns): a ratio for every pair present in a group.
RATIOS = ((REFERENCE, FUSED), (FUSED, LIMIT), (("fused",), ("captured",)), (("loop",), ("one-pass",)),
          (("realloc",), ("expand",)))
STATS = ("mean", "median", "min", "max", "stddev", "rounds", "iterations")
RATIO_STAT = "median"


class ReportError(ValueError):
    """The benchmark JSON lacks what the report needs."""


def _need(mapping: dict, key: str, where: str):
    if not isinstance(mapping, dict) or key not in mapping:
        raise ReportError(f"{where} has no {key!r}; is it a pytest-benchmark JSON (--benchmark-json) of "
                          f"`pytest benchmarks/`?")
    return mapping[key]


def _columns(benchmarks: list[tuple[str, dict]], group: str) -> dict[str, dict]:
    """Column name -> figures. Suites that share a group (the Triton and the extension suites
    measure the same shapes) may both have a column of one name: it is then qualified by suite."""
    names = [impl for impl, _ in benchmarks]
    columns = {}
    for impl, row in benchmarks:
        key = impl if names.count(impl) == 1 else f"{impl} ({row['suite']})"
        if key in columns:
            raise ReportError(f"group {group!r} has two benchmarks in column {key!r}: {columns[key]['name']} "
                              f"and {row['name']}")
        columns[key] = row
    return columns


def _ratios(columns: dict[str, dict]) -> dict[str, float]:
    """Every ratio of :data:`RATIOS` between two columns of the same suite."""
    ratios = {}
    for numerators, denominators in RATIOS:
        for num, a in columns.items():
            for den, b in columns.items():
                if a["impl"] in numerators and b["impl"] in denominators and a["suite"] == b["suite"]:
                    ratios[f"{num}/{den}"] = a[RATIO_STAT] / b[RATIO_STAT]
    return ratios


def summarize(data: dict, source: str = "") -> dict:
    """The results document of one benchmark run (see the module docstring)."""
    machine = _need(data, "machine_info", "the JSON")
    dgm = machine.get("dgm")
    if not isinstance(dgm, dict) or not dgm.get("device"):
        raise ReportError("machine_info has no 'dgm' device record: run the suite through benchmarks/conftest.py "
                          "(pytest benchmarks/ --benchmark-only --benchmark-json FILE)")
    stamp = _need(data, "datetime", "the JSON")
    found: dict[str, list] = {}
    for bench in _need(data, "benchmarks", "the JSON"):
        name = _need(bench, "name", "a benchmark")
        stats = _need(bench, "stats", f"benchmark {name}")
        impl = (bench.get("params") or {}).get("impl", name)
        suite = Path(bench.get("fullname", "").split("::")[0]).stem.removeprefix("bench_")
        row = {"name": name, "suite": suite, "impl": impl, **{k: _need(stats, k, f"stats of {name}") for k in STATS}}
        found.setdefault(bench.get("group") or name, []).append((impl, row))
    groups = {}
    for group, benchmarks in sorted(found.items()):
        columns = _columns(benchmarks, group)
        groups[group] = {"columns": columns, "ratios": _ratios(columns)}
    commit = data.get("commit_info") or {}
    return {
        "device": dgm["device"],
        "device_type": dgm.get("device_type"),
        "date": stamp[:10],
        "datetime": stamp,
        "versions": {"torch": dgm.get("torch"), "triton": dgm.get("triton"), "cuda": dgm.get("cuda"),
                     "python": machine.get("python_version"), "pytest-benchmark": data.get("version")},
        "cpu": (machine.get("cpu") or {}).get("brand_raw"),
        "cpu_threads": dgm.get("cpu_threads"),
        "commit": {k: commit.get(k) for k in ("id", "branch", "dirty")},
        "source": source,
        "unit": "s",
        "ratio_statistic": RATIO_STAT,
        "groups": groups,
    }


def file_name(summary: dict) -> str:
    """``<device>-<date>.json``, the device name in lower case with dashes."""
    device = re.sub(r"[^a-z0-9]+", "-", summary["device"].lower()).strip("-")
    return f"{device}-{summary['date']}.json"


def markdown(summary: dict) -> str:
    """The ratios as a Markdown table, headed by the device, date and versions."""
    v = summary["versions"]
    head = (f"Device: {summary['device']} ({summary['device_type']}), {summary['date']}; torch {v['torch']}, "
            f"triton {v['triton']}, CUDA {v['cuda']}. Ratios of {summary['ratio_statistic']} times: "
            f"above 1, the second column is faster.")
    lines = [head, "", "| group | ratio | value |", "|---|---|---:|"]
    rows = [(g, label, value) for g, group in summary["groups"].items() for label, value in group["ratios"].items()]
    lines += [f"| {g} | {label} | {value:.3g} |" for g, label, value in rows]
    if not rows:
        lines.append("| (no group holds two comparable columns) | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench_json", type=Path, help="pytest-benchmark JSON (--benchmark-json) of the suite")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="folder of the results file (default: benchmarks/results)")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.bench_json.read_text())
        summary = summarize(data, args.bench_json.name)
    except (OSError, json.JSONDecodeError, ReportError) as exc:
        print(f"report: {args.bench_json}: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / file_name(summary)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(markdown(summary))
    print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
