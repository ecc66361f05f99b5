"""Build the compiled quadrature kernel (everything else lives in pyproject.toml).

The kernel runs its loop over groups in parallel with OpenMP when the compiler
supports it (checked here by compiling a small test program); otherwise it is
built without, and runs on one thread.  ``MELSML_NO_OPENMP=1`` forces the
single-threaded build.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def openmp_flags() -> tuple[list[str], list[str]]:
    """(compile args, link args) for OpenMP, or ([], []) when it is not available."""
    if os.environ.get("MELSML_NO_OPENMP"):
        return [], []
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CompileError, LinkError
    from setuptools._distutils.sysconfig import customize_compiler

    flags = ["/openmp"] if sys.platform == "win32" else ["-fopenmp"]
    compiler = new_compiler()
    customize_compiler(compiler)
    tmp = Path(tempfile.mkdtemp())
    try:
        src = tmp / "omp_check.c"
        src.write_text(
            "#include <omp.h>\nint main(void) {\n  int n = 0;\n"
            "  #pragma omp parallel reduction(+:n)\n  n += 1;\n"
            "  return omp_get_max_threads() > 0 && n > 0 ? 0 : 1;\n}\n"
        )
        objects = compiler.compile([str(src)], output_dir=str(tmp), extra_postargs=flags)
        compiler.link_executable(objects, "omp_check", output_dir=str(tmp), extra_postargs=flags)
    except (CompileError, LinkError, OSError):
        print("melsml: OpenMP not available; building the single-threaded kernel")
        return [], []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return flags, ([] if sys.platform == "win32" else flags)


omp_compile, omp_link = openmp_flags()
extensions = [
    Extension(
        f"melsml.{name}",
        [f"melsml/{name}.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3", *omp_compile] if sys.platform != "win32" else omp_compile,
        extra_link_args=omp_link,
    )
    for name in ("_quad", "_nested", "_mv")
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
)
