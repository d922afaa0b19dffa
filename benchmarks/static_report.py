"""Static compile report: registers, spills, shared memory and tensor-core instructions of every
kernel of the package, for sm_80 (A100) and sm_90 (H100), without a GPU.

Triton kernels: every ``@triton.autotune`` kernel of ``dgm.kernels.*_kernels`` is compiled for
every shipped config, with the signature, specialisation and compile-time arguments its launcher
actually passes: the launchers (``masked_mm``, ``conv_mm``, ...) run on ``meta`` tensors with the
kernels replaced by recorders, and each recorded call goes through Triton's own binder, as a
launch would, then ``triton.compile`` for a ``GPUTarget``. Registers and spills come from the
``ptxas -v`` log of that compile, shared memory from the compiled metadata, ``mma`` from the PTX
(``wgmma`` on sm_90, ``mma`` for ``mma.sync``). CUDA kernels of ``csrc/cuda/*.cu``: ``nvcc
-Xptxas -v`` per architecture.

    python benchmarks/static_report.py --out benchmarks/results/static-DATE.json --markdown table.md

``--quick`` compiles one variant per kernel (every config, both architectures), the test's subset.
Must run with ``TRITON_INTERPRET`` unset (the interpreter replaces the kernels it compiles).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import io
import itertools
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
ARCHS = (80, 90)
# Shared memory one thread block may opt into: 163 KB on compute capability 8.0 (A100), 227 KB on
# 9.0 (H100) -- CUDA C++ Programming Guide, "Technical Specifications per Compute Capability";
# also the Ampere and Hopper tuning guides, "Unified Shared Memory/L1/Texture Cache".
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
DTYPES = ("float16", "bfloat16", "float32-tf32", "float32-ieee")


@dataclass
class Launch:
    """One recorded kernel call: the autotuned kernel, its arguments, and what it stands for."""
    kernel: str
    variant: str
    dtype: str
    shape: str
    tuner: object
    args: tuple
    kwargs: dict


def _kernel_modules():
    import dgm.kernels as pkg

    return [__import__(f"dgm.kernels.{m.name}", fromlist=["_"]) for m in pkgutil.iter_modules(pkg.__path__)
            if m.name.endswith("_kernels")]


def autotuned_kernels() -> dict[str, tuple[object, str]]:
    """Every autotuned kernel of the package: ``attribute -> (module, attribute)`` (by attribute: one
    JIT function may be autotuned twice, over two config lists, as the fp32 ieee linear is)."""
    from triton.runtime.autotuner import Autotuner

    found = {}
    for mod in _kernel_modules():
        for attr, value in vars(mod).items():
            if isinstance(value, Autotuner):
                found[attr] = (mod, attr)
    return found


class _Recorder:
    """Stands in for an autotuned kernel: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self, name, tuner, sink):
        self.name, self.tuner, self.sink = name, tuner, sink

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.sink.append((self.name, self.tuner, args, kwargs))


def record(launcher, *args, **kwargs) -> list[tuple[str, object, tuple, dict]]:
    """The kernel calls ``launcher(*args, **kwargs)`` makes, without launching anything."""
    calls = []
    with contextlib.ExitStack() as stack:
        for mod, attr in autotuned_kernels().values():
            stack.enter_context(mock.patch.object(mod, attr, _Recorder(attr, getattr(mod, attr), calls)))
        launcher(*args, **kwargs)
    return calls


def _torch_dtype(dtype: str):
    import torch

    return getattr(torch, dtype.partition("-")[0])


@contextlib.contextmanager
def _precision(dtype: str):
    """``torch.backends.cuda.matmul.allow_tf32`` as a report dtype sets it (the launchers read it)."""
    import torch

    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = not dtype.endswith("-ieee")
    try:
        yield
    finally:
        matmul.allow_tf32 = before


def _linear_cases(dtype, M, N, K):
    """The masked linear's launches: forward, input gradient and weight gradient per mask form, as
    :mod:`dgm.kernels.linear_op` makes them (DGMw soft mask, its stored bits, replay of 3 tasks'
    bits, DGMa's unit scale with the reserved units)."""
    import torch

    from dgm.kernels import linear_kernels as lk

    dt = _torch_dtype(dtype)
    e = lambda *shape, dtype=dt: torch.empty(*shape, device="meta", dtype=dtype)  # noqa: E731
    x, w, g, b = e(M, K), e(N, K), e(M, N), e(N)
    lg, blg, s = e(N, K, dtype=torch.float32), e(N, dtype=torch.float32), e((), dtype=torch.float32)
    bits, bbits = e(3, N, (K + 7) // 8, dtype=torch.uint8), e(3, N, dtype=torch.uint8)
    fbits, fout, fin = e(N, (K + 7) // 8, dtype=torch.uint8), e(N, dtype=torch.uint8), e(K, dtype=torch.uint8)
    perm, task, offs = e(M, dtype=torch.int64), e(M, dtype=torch.int32), e(4, dtype=torch.int64)
    soft = dict(logits=lg, s=s)
    replay = dict(bits=bits, perm=perm)
    shape = f"M={M} N={N} K={K}"
    # One task's mask (soft or bits) is applied once, by the masked-weight pass: the forward and the
    # input gradient read W * m unmasked, the bias masked in the epilogue.
    yield "fwd w_eff+soft bias", shape, lk.masked_mm, (x, w), dict(w_rows_are_n=True, bias=b, bias_logits=blg, s=s)
    yield "fwd w_eff+bits bias", shape, lk.masked_mm, (x, w), dict(w_rows_are_n=True, bias=b, bias_bits=bbits[0])
    yield "fwd replay", shape, lk.masked_mm, (x, w), dict(w_rows_are_n=True, sorted_task=task, bias=b,
                                                           bias_bits=bbits, **replay)
    yield "fwd unit-scale", shape, lk.masked_mm, (x, w), dict(w_rows_are_n=True, bias=b, scale=e(M, N),
                                                               write_pre=True)
    yield "dgrad w_eff", shape, lk.masked_mm, (g, w), dict(w_rows_are_n=False)
    yield "dgrad replay", shape, lk.masked_mm, (g, w), dict(w_rows_are_n=False, sorted_task=task, **replay)
    yield "wgrad soft+frozen", shape, lk.masked_wgrad, (g, x, w), dict(frozen_bits=fbits, write_logits=True,
                                                                        **soft)
    yield "wgrad replay", shape, lk.masked_wgrad, (g, x, w), dict(task_offsets=offs, frozen_bits=fbits, **replay)
    yield "wgrad units", shape, lk.masked_wgrad, (g, x, w), dict(frozen_out=fout, frozen_in=fin)


def _conv_cases(dtype, B, cin, cout, size, transposed):
    """The masked conv's launches as :mod:`dgm.kernels.conv_op` makes them: the generator's
    conv-transpose k4 s2 p1 (``transposed``) or the critic's conv k4 s2 p1, forward, input gradient
    (the adjoint conv) and weight gradient (one program per tap; split-K with atomics as a GPU
    picks it for small weights)."""
    import torch

    from dgm.kernels import conv_kernels as ck

    dt = _torch_dtype(dtype)
    e = lambda *shape, dtype=dt: torch.empty(*shape, device="meta", dtype=dtype)  # noqa: E731
    out = size * 2 if transposed else size // 2
    x, g = e(B, cin, size, size), e(B, cout, out, out)
    w = e(cin, cout, 4, 4) if transposed else e(cout, cin, 4, 4)
    rows, cols = w.shape[0], w[0].numel()
    lg, blg, s = e(w.shape, dtype=torch.float32), e(cout, dtype=torch.float32), e((), dtype=torch.float32)
    bits, bbits = e(3, rows, (cols + 7) // 8, dtype=torch.uint8), e(3, cout, dtype=torch.uint8)
    fbits = e(rows, (cols + 7) // 8, dtype=torch.uint8)
    fout, fin = e(cout, dtype=torch.uint8), e(cin, dtype=torch.uint8)
    perm, task, offs = e(B, dtype=torch.int64), e(B, dtype=torch.int32), e(4, dtype=torch.int64)
    geo = dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1))
    soft = dict(logits=lg, s=s, **geo)
    replay = dict(bits=bits, perm=perm, **geo)
    name = "convT" if transposed else "conv"
    shape = f"{name} k4s2p1 B={B} {cin}->{cout} {size}x{size}"
    p, q = (x, g) if transposed else (g, x)
    yield f"{name} fwd soft+bias", shape, ck.conv_mm, (x, w, (out, out)), dict(
        transposed=transposed, bias=e(cout), bias_logits=blg, **soft)
    yield f"{name} fwd replay", shape, ck.conv_mm, (x, w, (out, out)), dict(
        transposed=transposed, sorted_task=task, bias=e(cout), bias_bits=bbits, **replay)
    yield f"{name} fwd unit-scale", shape, ck.conv_mm, (x, w, (out, out)), dict(
        transposed=transposed, bias=e(cout), scale=e(B, cout), write_pre=True, **geo)
    yield f"{name} dgrad soft", shape, ck.conv_mm, (g, w, (size, size)), dict(transposed=not transposed, **soft)
    yield f"{name} dgrad replay", shape, ck.conv_mm, (g, w, (size, size)), dict(
        transposed=not transposed, sorted_task=task, **replay)
    yield f"{name} wgrad soft+frozen", shape, ck.conv_wgrad, (p, q, w), dict(
        frozen_bits=fbits, out_on_rows=not transposed, write_logits=True, **soft)
    yield f"{name} wgrad soft split", shape, _split(ck, ck.conv_wgrad), (p, q, w), dict(
        frozen_bits=fbits, out_on_rows=not transposed, write_logits=True, **soft)
    yield f"{name} wgrad replay", shape, ck.conv_wgrad, (p, q, w), dict(
        task_offsets=offs, frozen_bits=fbits, out_on_rows=not transposed, **replay)
    yield f"{name} wgrad units", shape, ck.conv_wgrad, (p, q, w), dict(
        frozen_out=fout, frozen_in=fin, out_on_rows=not transposed, **geo)


def _split(module, launcher):
    """``launcher`` with the weight-gradient reduction split over 4 programs (atomic epilogue), as
    :func:`~dgm.kernels.conv_kernels.wgrad_splits` chooses on a GPU for a small weight."""
    def run(*args, **kwargs):
        with mock.patch.object(module, "wgrad_splits", lambda *a: 4):
            return launcher(*args, **kwargs)
    return run


# Paper sizes (the generator's first widths ngf=6 and its largest ngf=64 at batch 64) and a
# 4096-wide linear; the conv-transpose is the generator's upsampling layer, the conv the critic's.
SHAPES = {
    "linear": [dict(M=64, N=96, K=100), dict(M=4096, N=4096, K=4096)],
    "conv": [dict(B=64, cin=12, cout=6, size=16), dict(B=64, cin=128, cout=64, size=8)],
}


def launches(quick: bool) -> list[Launch]:
    """Every kernel call of the report. ``quick``: the first variant of each kernel at the first
    shape in the first dtype that launches it (fp16, or fp32 ieee for the kernels of that path), so
    every kernel still appears with every config."""
    found = []
    for dtype in DTYPES:
        with _precision(dtype):
            gens = [_linear_cases(dtype, **sh) for sh in SHAPES["linear"][:1 if quick else None]]
            gens += [_conv_cases(dtype, **sh, transposed=t) for sh in SHAPES["conv"][:1 if quick else None]
                     for t in (True, False)]
            for variant, shape, launcher, args, kwargs in itertools.chain(*gens):
                for name, tuner, a, kw in record(launcher, *args, **kwargs):
                    found.append(Launch(name, variant, dtype, shape, tuner, a, kw))
    if quick:
        seen, first = set(), []
        for launch in found:
            key = (launch.kernel, launch.kwargs.get("TRANSPOSED"))
            if key not in seen:
                seen.add(key)
                first.append(launch)
        found = first
    missing = set(autotuned_kernels()) - {launch.kernel for launch in found}
    if missing:
        raise RuntimeError(f"no launch case reaches the kernels {sorted(missing)}: add one to the report")
    return found


_PTXAS = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'.*?(\d+) bytes spill stores, (\d+) bytes spill "
                    r"loads.*?Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?", re.S)


def _ptxas_rows(log: str) -> list[dict]:
    return [dict(function=m[0], sm=m[1], spill_stores=int(m[2]), spill_loads=int(m[3]), registers=int(m[4]),
                 smem=int(m[5] or 0)) for m in _PTXAS.findall(log)]


def _mma(ptx: str) -> str:
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if re.search(r"\bmma\.sync\b", ptx):
        return "mma"
    return "none"


_JOBS: list[Launch] = []


def _compile(job: tuple[int, int, int]) -> dict:
    """Compile launch ``i`` with config ``c`` for ``arch``, as a launch on that GPU would."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    i, c, arch = job
    launch = _JOBS[i]
    fn, config = launch.tuner.fn, launch.tuner.configs[c]
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.kwargs, **config.all_kwargs())
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    log = io.StringIO()
    knobs.nvidia.dump_ptxas_log = True
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    stats = _ptxas_rows(log.getvalue())
    if len(stats) != 1:
        raise RuntimeError(f"{launch.kernel}: no ptxas log for {config} (a cached compile? the cache dir is fresh)")
    config_name = ", ".join(f"{k}={v}" for k, v in config.kwargs.items()) + \
        f", warps={config.num_warps}, stages={config.num_stages}"
    return dict(kernel=launch.kernel, source="triton", variant=launch.variant, dtype=launch.dtype, shape=launch.shape,
                config=config_name, shipped_configs=len(launch.tuner.configs), arch=f"sm_{arch}",
                registers=stats[0]["registers"],
                spill_bytes=stats[0]["spill_stores"] + stats[0]["spill_loads"],
                shared_bytes=int(compiled.metadata.shared), mma=_mma(compiled.asm["ptx"]))


def triton_rows(quick: bool, jobs: int, archs=ARCHS) -> list[dict]:
    """One row per (launch, config, arch), compiled in ``jobs`` processes."""
    global _JOBS
    _JOBS = launches(quick)
    work = [(i, c, arch) for i, launch in enumerate(_JOBS) for c in range(len(launch.tuner.configs))
            for arch in archs]
    if jobs <= 1:
        return [_compile(w) for w in work]
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_compile, work))


def cuda_rows(archs=ARCHS) -> list[dict]:
    """``nvcc -Xptxas -v`` of every ``csrc/cuda/*.cu``, per architecture and kernel instance."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not os.path.exists(nvcc):
        raise RuntimeError("nvcc not found (PATH or /usr/local/cuda/bin): needed for the CUDA kernels' rows")
    rows = []
    for src in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        for arch in archs:
            cmd = [nvcc, "-c", "-O3", "-std=c++17", f"-arch=sm_{arch}", "-Xptxas", "-v", "-DDGM_WITH_CUDA=1",
                   "-I", str(ROOT / "csrc"), str(src), "-o", os.devnull]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
            for s in _ptxas_rows(out.stderr):
                name = _demangle(s["function"])
                rows.append(dict(kernel=name, source=f"csrc/cuda/{src.name}", variant="", dtype=_template_dtype(name),
                                 shape="", config="", arch=f"sm_{arch}", registers=s["registers"],
                                 spill_bytes=s["spill_stores"] + s["spill_loads"], shared_bytes=s["smem"],
                                 mma="none"))
    return rows


def _demangle(symbol: str) -> str:
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None:
        return symbol
    return subprocess.run([tool, symbol], capture_output=True, text=True).stdout.strip() or symbol


def _template_dtype(name: str) -> str:
    for key, dtype in (("__half", "float16"), ("__nv_bfloat16", "bfloat16"), ("double", "float64"),
                       ("float", "float32")):
        if key in name:
            return dtype
    return ""


def problems(rows: list[dict]) -> list[str]:
    """What the report forbids: a spill, or shared memory above the target's per-block limit."""
    out = []
    for r in rows:
        where = f"{r['kernel']} [{r['variant']} {r['dtype']} {r['config']}] on {r['arch']}"
        if r["spill_bytes"]:
            out.append(f"{where}: {r['spill_bytes']} bytes of spills ({r['registers']} registers)")
        limit = SHARED_LIMIT[int(r["arch"][3:])]
        if r["shared_bytes"] > limit:
            out.append(f"{where}: {r['shared_bytes']} bytes of shared memory, above the {limit} of a block")
    return out


def markdown(rows: list[dict]) -> str:
    """Per kernel, variant, dtype and arch: the range over configs and shapes of each figure."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kernel"], r["variant"], r["dtype"], r["arch"]), []).append(r)
    span = lambda v: f"{min(v)}" if min(v) == max(v) else f"{min(v)}-{max(v)}"  # noqa: E731
    lines = ["| kernel | variant | dtype | arch | configs | registers | spill bytes | shared KB | mma |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (kernel, variant, dtype, arch), g in groups.items():
        shared = [round(r["shared_bytes"] / 1024, 1) for r in g]
        mma = "/".join(sorted({r["mma"] for r in g}))
        lines.append(f"| {kernel} | {variant} | {dtype} | {arch} | {len({r['config'] for r in g})} | "
                     f"{span([r['registers'] for r in g])} | {span([r['spill_bytes'] for r in g])} | "
                     f"{span(shared)} | {mma} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON file of the rows")
    parser.add_argument("--markdown", type=Path, help="Markdown table (default: stdout)")
    parser.add_argument("--quick", action="store_true", help="one variant per kernel, fp16, the first shape")
    parser.add_argument("--arch", type=int, nargs="+", choices=ARCHS, default=list(ARCHS), help="compute capabilities")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    parser.add_argument("--no-cuda", action="store_true", help="skip the csrc/cuda kernels")
    parser.add_argument("--check", action="store_true", help="exit 1 on a spill or a config above shared memory")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1 is set: the interpreter would replace the kernels; run with it unset")
    # A fresh cache: every compile runs ptxas, whose log holds the registers and spills.
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="dgm-static-")
    try:
        rows = triton_rows(args.quick, args.jobs, args.arch) + ([] if args.no_cuda else cuda_rows(args.arch))
    finally:
        shutil.rmtree(os.environ["TRITON_CACHE_DIR"], ignore_errors=True)
    import torch
    import triton

    meta = dict(date=datetime.date.today().isoformat(), torch=torch.__version__, triton=triton.__version__,
                nvcc=_nvcc_version(), quick=args.quick)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("[\n" + ",\n".join(json.dumps(dict(r, **meta)) for r in rows) + "\n]\n")
    table = markdown(rows)
    if args.markdown:
        args.markdown.write_text(table)
    else:
        sys.stdout.write(table)
    bad = problems(rows)
    for line in bad:
        print(line, file=sys.stderr)
    return 1 if bad and args.check else 0


def _nvcc_version() -> str:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not os.path.exists(nvcc):
        return ""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+)", out)
    return m[1] if m else ""


if __name__ == "__main__":
    sys.exit(main())
