"""The static compile report (``benchmarks/static_report.py``): every Triton kernel, for every
shipped config, compiled for sm_80 and sm_90 with the arguments its launcher passes, must not
spill and must fit the target's shared memory; the CUDA kernels of ``csrc/cuda`` must not spill.

The compile needs Triton's compiler, not its interpreter, so the report runs in a subprocess with
``TRITON_INTERPRET`` unset (the conftest sets it for the other tests). Its quick subset: one
variant per kernel in fp16 at the paper's sizes, every config, both architectures."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import static_report  # noqa: E402


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("static") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "static_report.py"), "--quick", "--out", str(out)]
    if shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"):
        cmd.append("--no-cuda")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


def test_every_kernel_and_config_compiles_for_both_targets(rows):
    """Every autotuned kernel, each with all the configs it ships on a GPU (the report counts them:
    this process runs under the interpreter, which ships one)."""
    for name in static_report.autotuned_kernels():
        for arch in ("sm_80", "sm_90"):
            mine = [r for r in rows if r["kernel"] == name and r["arch"] == arch]
            assert mine, (name, arch)
            assert len({r["config"] for r in mine}) == mine[0]["shipped_configs"] > 1, (name, arch)


def test_no_spills_and_shared_memory_within_the_block_limit(rows):
    assert static_report.problems(rows) == []


def test_tensor_cores_in_every_half_precision_gemm(rows):
    """wgmma on sm_90 where the tile allows it (a 64-row warpgroup), mma.sync otherwise; fp32
    without TF32 ("ieee") runs on the FMA units by definition."""
    assert [r for r in rows if r["source"] == "triton" and r["dtype"] != "float32-ieee" and r["mma"] == "none"] == []
    assert {r["mma"] for r in rows if r["dtype"] == "float32-ieee"} == {"none"}


def test_problems_name_spills_and_shared_memory_overflow():
    row = dict(kernel="k", variant="v", dtype="float16", config="c", arch="sm_80", registers=255, spill_bytes=8,
               shared_bytes=170 * 1024, mma="mma")
    found = static_report.problems([row])
    assert len(found) == 2 and "8 bytes of spills" in found[0] and "above the 166912" in found[1]


def test_ptxas_log_is_parsed():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\nptxas info    : Function properties for k\n"
           "    16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads\n"
           "ptxas info    : Used 168 registers, used 1 barriers, 16 bytes cumulative stack size\n")
    assert static_report._ptxas_rows(log) == [dict(function="k", sm="sm_90a", spill_stores=12, spill_loads=8,
                                                   registers=168, smem=0)]
