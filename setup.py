"""Builds dgm: the Python package (with kernels/ as dgm.kernels), the console scripts, and the
extension dgm._C from csrc/ (CUDA when torch has CUDA and nvcc is found, CPU C++ otherwise)."""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def extension_modules():
    import torch
    from torch.utils import cpp_extension

    if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
        cpp_extension.CUDA_HOME = "/usr/local/cuda"
    # Few translation units: each .cpp costs tens of seconds of torch headers; the .cu files
    # include no torch header and compile in seconds.
    cpp = [os.path.join("csrc", "ops.cpp")]
    cu = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    use_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and bool(cu)
    cxx = ["-O3"]
    if use_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        return [cpp_extension.CUDAExtension(
            "dgm._C", cpp + [os.path.join("csrc", "cuda", "glue.cpp")] + cu,
            define_macros=[("DGM_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
        )], cpp_extension.BuildExtension
    return [cpp_extension.CppExtension("dgm._C", cpp, extra_compile_args=cxx)], cpp_extension.BuildExtension


ext_modules, build_ext = extension_modules()

setup(
    name="dgm",
    version="0.1.0",
    description="Continual learning with Dynamic Generative Memory, with fused Triton and CUDA kernels",
    python_requires=">=3.10",
    packages=["dgm", "dgm.ops", "dgm.layers", "dgm.models", "dgm.methods", "dgm.data", "dgm.cli", "dgm.kernels"],
    package_dir={"dgm.kernels": "kernels"},
    install_requires=["torch>=2.4", "torchvision", "numpy", "scipy", "tqdm", "matplotlib", "pillow"],
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    entry_points={"console_scripts": ["dgm-train=dgm.cli.train:main", "dgm-data=dgm.cli.data:main",
                                        "dgm-results=dgm.cli.results:main"]},
)
