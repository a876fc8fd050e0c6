"""Build dgnerf._C against the torch that is installed.

    pip install --no-build-isolation .          # or: pip install --no-build-isolation -e .

The C++ CPU kernels are always built. The CUDA kernels are built when the installed torch is a
CUDA build and nvcc is found; DGNERF_CUDA=0 forces them off, DGNERF_CUDA=1 forces them on (and
fails loudly if that is impossible). Without a visible GPU the arch list defaults to 9.0 (H100/H200);
set TORCH_CUDA_ARCH_LIST to override. The torch version and arch list the extension was built with
are written next to it (dgnerf/_build_meta.json) so a mismatch is reported clearly at import.
"""
import glob
import json
import os
import platform
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - the message is the point
    sys.exit(
        "dgnerf: torch must be installed before building (pip install torch==2.13.0), and the build "
        "must see it: use `pip install --no-build-isolation .`"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda():
    flag = os.environ.get("DGNERF_CUDA", "").strip()
    has_torch_cuda = torch.version.cuda is not None
    cuda_home = os.environ.get("CUDA_HOME") or CUDA_HOME
    has_nvcc = bool(cuda_home) and os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))
    if flag == "0":
        return False, "disabled by DGNERF_CUDA=0"
    if flag == "1":
        if not has_torch_cuda:
            sys.exit(f"dgnerf: DGNERF_CUDA=1 but the installed torch {torch.__version__} is a CPU-only build")
        if not has_nvcc:
            sys.exit(f"dgnerf: DGNERF_CUDA=1 but nvcc was not found (CUDA_HOME={cuda_home!r}); set CUDA_HOME")
        return True, "forced by DGNERF_CUDA=1"
    if not has_torch_cuda:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if not has_nvcc:
        print(
            "dgnerf: WARNING: torch is a CUDA build but nvcc was not found "
            f"(CUDA_HOME={cuda_home!r}); building the CPU kernels only. Set CUDA_HOME to build the CUDA kernels.",
            file=sys.stderr,
        )
        return False, "nvcc not found"
    return True, "torch CUDA build and nvcc found"


use_cuda, why = _want_cuda()
if use_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
    try:
        visible = torch.cuda.is_available() and torch.cuda.device_count() > 0
    except Exception:
        visible = False
    if visible:
        cc = torch.cuda.get_device_capability(0)
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{cc[0]}.{cc[1]}"
    else:
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if use_cuda else ""
print(f"dgnerf: building CPU kernels; CUDA kernels: {use_cuda} ({why}); arch list: {arch_list or '-'}", file=sys.stderr)

cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
cu_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True)) if use_cuda else []
include_dirs = [os.path.join(ROOT, "csrc", "include")]
# -g0: no debug info halves compile time; fast math is NOT used (exactness tests compare with torch).
cxx_flags = ["-O3", "-g0", "-fopenmp"]
nvcc_flags = ["-O3", "--expt-relaxed-constexpr"]
if os.environ.get("DGNERF_PTXAS_V"):  # register / spill report per kernel, with source lines for profilers
    nvcc_flags += ["-lineinfo", "-Xptxas=-v"]
define_macros = [("DGNERF_TORCH_VERSION", f'"{torch.__version__}"'), ("DGNERF_ARCH_LIST", f'"{arch_list}"')]
if use_cuda:
    define_macros.append(("DGNERF_WITH_CUDA", "1"))
    # A toolkit without cusparse.h (like a bare system CUDA) still compiles: .cu files avoid
    # ATen/cuda/CUDAContext.h, but add the pip nvidia include dirs when present for other headers.
    try:
        import nvidia  # noqa: F401

        for p in getattr(nvidia, "__path__", []):
            include_dirs += sorted(glob.glob(os.path.join(p, "*", "include")))
    except ImportError:
        pass
    ext = CUDAExtension(
        "dgnerf._C",
        cpp_sources + cu_sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=["-fopenmp"],
    )
else:
    ext = CppExtension(
        "dgnerf._C",
        cpp_sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


class Build(BuildExtension):
    def run(self):
        super().run()
        meta = {
            "torch_version": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cuda_kernels": use_cuda,
            "cuda_reason": why,
            "arch_list": arch_list,
            "python": platform.python_version(),
        }
        for out_dir in {os.path.join(self.build_lib, "dgnerf"), os.path.join(ROOT, "dgnerf")}:
            if os.path.isdir(out_dir):
                with open(os.path.join(out_dir, "_build_meta.json"), "w") as f:
                    json.dump(meta, f, indent=1)


setup(ext_modules=[ext], cmdclass={"build_ext": Build.with_options(use_ninja=True)})
