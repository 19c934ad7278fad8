"""Build of the kvx Python package: compiles the kvx headers (one
translation unit, lib/kvx_lib.c, as `make lib` does) into kvx/_libkvx*.so,
which kvx/_ffi.py loads with ctypes.

Sources: when built from the kvx repository (python/ inside it) the headers
are copied from .. into csrc/ first; an sdist carries csrc/ itself. The
installed package needs neither afterwards.

Like the Makefile: -DKVX_WITH_RDMA when the rdma-core headers exist,
-DKVX_WITH_CUDA when the CUDA toolkit headers do (both libraries are still
loaded at run time with dlopen). CC and KVX_PY_CFLAGS are honoured."""
import glob
import os
import re
import shlex
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
REPO = os.path.dirname(HERE)


def _sync_sources() -> None:
    """Copies ../kvx*.h and ../lib/kvx_lib.c into csrc/ when building from the repo."""
    if not os.path.exists(os.path.join(REPO, "kvx.h")):
        return
    os.makedirs(os.path.join(CSRC, "lib"), exist_ok=True)
    for h in glob.glob(os.path.join(REPO, "kvx*.h")):
        shutil.copy2(h, CSRC)
    shutil.copy2(os.path.join(REPO, "lib", "kvx_lib.c"), os.path.join(CSRC, "lib"))


def _version() -> str:
    text = open(os.path.join(CSRC, "kvx.h")).read()
    parts = [re.search(r"#define KVX_VERSION_%s (\d+)" % p, text).group(1)
             for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts)


def _cuda_include() -> str:
    for base in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if base and os.path.exists(os.path.join(base, "include", "cuda.h")):
            return os.path.join(base, "include")
    for inc in ("/usr/local/cuda/include", "/usr/include", "/opt/cuda/include"):
        if os.path.exists(os.path.join(inc, "cuda.h")):
            return inc
    return ""


class BuildKvx(build_ext):
    """Compiles csrc/lib/kvx_lib.c with the C compiler (not Python's
    extension flags: the result is a plain C library for ctypes)."""

    def build_extension(self, ext):
        out = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cc = shlex.split(os.environ.get("CC", "cc"))
        flags = shlex.split(os.environ.get("KVX_PY_CFLAGS", "-std=c11 -O2 -g"))
        flags += ["-fPIC", "-fvisibility=hidden", "-shared"]
        if os.path.exists("/usr/include/infiniband/verbs.h"):
            flags.append("-DKVX_WITH_RDMA")
        cuda = _cuda_include()
        if cuda:
            flags += ["-DKVX_WITH_CUDA", "-I" + cuda]
        cmd = cc + flags + [os.path.join(CSRC, "lib", "kvx_lib.c"), "-o", out,
                            "-lpthread", "-lm", "-ldl"]
        print(" ".join(shlex.quote(c) for c in cmd))
        subprocess.check_call(cmd)


_sync_sources()
setup(
    version=_version(),
    ext_modules=[Extension("kvx._libkvx", sources=["csrc/lib/kvx_lib.c"])],
    cmdclass={"build_ext": BuildKvx},
)
