"""Compile the deformable-convolution TF custom op against the installed TensorFlow.

The shared library must be rebuilt for every TensorFlow version (no stable C++ ABI), so it is
cached per version in ``~/.cache/gflv2_keras/ops/tf-<version>/`` (override the directory with
the ``GFLV2_KERAS_OPS_DIR`` environment variable). The file name carries a hash of the source
and flags, so editing ``deform_conv.cc`` triggers a rebuild, and an instruction-set tag, so a
cache shared between machines never loads AVX-512 code on a CPU without it.

Usage::

    python -m gflv2_keras.ops.deform_conv.build          # build if missing, print the path
    python -m gflv2_keras.ops.deform_conv.build --force  # rebuild
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE = Path(__file__).with_name("deform_conv.cc")
LIBRARY_STEM = "gfl_deform_conv"

# Instruction-set levels, best first: (tag, /proc/cpuinfo flags required, compiler flags).
_ISA_LEVELS = (
    ("avx512", ("avx512f", "avx512dq", "avx512bw", "avx512vl", "avx2", "fma"),
     ("-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c")),
    ("avx2", ("avx2", "fma"), ("-mavx2", "-mfma", "-mf16c")),
    ("generic", (), ()),
)


class CompilerNotFoundError(RuntimeError):
    """No C++ compiler is available to build the custom op."""


class BuildError(RuntimeError):
    """The compiler ran and failed."""


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_level():
    """Returns ``(tag, compiler_flags)`` of the best instruction set this CPU supports."""
    flags = _cpu_flags()
    for tag, required, cflags in _ISA_LEVELS:
        if all(f in flags for f in required):
            return tag, list(cflags)
    return "generic", []


def find_compiler():
    """Path of the C++ compiler: ``$CXX``, else g++, c++ or clang++ on PATH; None if none."""
    candidates = [os.environ.get("CXX")] if os.environ.get("CXX") else []
    candidates += ["g++", "c++", "clang++"]
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    return None


def cache_dir():
    """Directory holding the built library for the installed TensorFlow version."""
    override = os.environ.get("GFLV2_KERAS_OPS_DIR")
    if override:
        return Path(override).expanduser()
    import tensorflow as tf

    return Path.home() / ".cache" / "gflv2_keras" / "ops" / f"tf-{tf.__version__}"


def _compile_command(compiler, output):
    import tensorflow as tf

    _, isa_flags = isa_level()
    return [
        compiler, "-std=c++17", "-shared", "-fPIC", "-O3", *isa_flags,
        str(SOURCE), "-o", str(output),
        *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags(),
    ]


def library_path():
    """Where the library for this TF version, source, flags and CPU lives (built or not)."""
    import tensorflow as tf

    tag, isa_flags = isa_level()
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(" ".join([tf.__version__, *isa_flags, *tf.sysconfig.get_compile_flags()]).encode())
    return cache_dir() / f"{LIBRARY_STEM}_{tag}_{digest.hexdigest()[:12]}.so"


def build_deform_conv_op(force=False, verbose=True):
    """Compiles the op if needed and returns the path of the shared library.

    Raises:
        CompilerNotFoundError: no C++ compiler on this machine.
        BuildError: the compiler failed (its output is in the message).
    """
    target = library_path()
    if target.exists() and not force:
        if verbose:
            print(f"[gflv2_keras] deform_conv op already built: {target}")
        return target
    compiler = find_compiler()
    if compiler is None:
        raise CompilerNotFoundError(
            "No C++ compiler found (looked for $CXX, g++, c++, clang++) to build the GflDeformConv2d "
            "TensorFlow op. Install one (e.g. `apt-get install g++`), or use "
            "DeformConv2D(implementation='portable'), which needs no compiled code."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Compile to a temporary name and rename, so concurrent builds never load a partial file.
    fd, tmp_name = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    command = _compile_command(compiler, tmp_name)
    if verbose:
        print(f"[gflv2_keras] building deform_conv op with {compiler} (a minute or more) ...", flush=True)
        print("[gflv2_keras]   " + " ".join(command), flush=True)
    start = time.time()
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(
                f"Building the GflDeformConv2d op failed (exit {result.returncode}).\n"
                f"command: {' '.join(command)}\n{result.stderr[-8000:]}"
            )
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    # Libraries of older sources are never loaded again (a process that has one open keeps it).
    for stale in target.parent.glob(f"{LIBRARY_STEM}_{isa_level()[0]}_*.so"):
        if stale != target:
            stale.unlink(missing_ok=True)
    if verbose:
        print(f"[gflv2_keras] built {target} in {time.time() - start:.1f} s", flush=True)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild even if the library exists")
    parser.add_argument("--quiet", action="store_true", help="print only the library path")
    args = parser.parse_args(argv)
    try:
        path = build_deform_conv_op(force=args.force, verbose=not args.quiet)
    except (CompilerNotFoundError, BuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
