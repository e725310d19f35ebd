"""The package works from a normal (non-editable) wheel install, outside the repository.

Builds a wheel from a copy of the source tree, installs it into a fresh virtual environment
and from a folder outside the repository lists the named recipes and runs ``gflv2 demo --quick``
(one short epoch).

Nothing is downloaded: the fresh environment sees the packages of the interpreter running the
tests (TensorFlow, Keras, ...) through a ``.pth`` file that adds that interpreter's site folders
(``site.addsitedir``, so their own ``.pth`` files apply too), whether that interpreter is a
system Python or itself a virtual environment (``python3 -m venv v && . v/bin/activate && bash
scripts/test.sh``). ``venv --system-site-packages`` would not do: it exposes the *base*
interpreter's packages, not those of the virtual environment the tests run in.
"""

import importlib.util
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "work_dirs", "demo_output")


def _run(command, cwd, env=None, timeout=900):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel_install")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=IGNORED)
    wheels = root / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)], root)
    (wheel,) = wheels.glob("gflv2_keras-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    purelib = _run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root)
    (Path(purelib.strip()) / "_running_interpreter_site.pth").write_text(_site_pth_line())
    # --ignore-installed: the package may also be installed (editable) in the running interpreter's
    # site folders; pip must neither uninstall nor skip it, only install the wheel into the venv.
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
          str(wheel)], root)
    outside = root / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return {"bin": bin_dir, "cwd": outside, "env": env}


def _running_site_dirs():
    """The site folders of the interpreter running the tests, in its ``sys.path`` order."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.insert(0, site.getusersitepackages())
    return [d for d in dirs if os.path.isdir(d)]


def _site_pth_line():
    """One ``.pth`` line adding the running interpreter's site folders (and their ``.pth`` files)."""
    calls = "; ".join(f"site.addsitedir({d!r})" for d in _running_site_dirs())
    return f"import site; {calls}\n"


def test_wheel_install_sees_the_packages_of_the_interpreter_running_the_tests(installed_wheel):
    modules = ("tensorflow", "keras", "keras_hub", "numpy", "PIL", "pycocotools", "yaml")
    expected = [importlib.util.find_spec(name).origin for name in modules]
    code = f"import importlib.util; print([importlib.util.find_spec(m).origin for m in {modules!r}])"
    where = _run([str(installed_wheel["bin"] / "python"), "-c", code], installed_wheel["cwd"], installed_wheel["env"])
    assert where.strip() == repr(expected)


def test_wheel_install_imports_its_own_copy_of_the_package(installed_wheel):
    where = _run(
        [str(installed_wheel["bin"] / "python"), "-c", "import gflv2_keras; print(gflv2_keras.__file__)"],
        installed_wheel["cwd"],
        installed_wheel["env"],
    )
    assert "site-packages" in where and str(REPO) not in where


def test_wheel_install_lists_the_recipes_outside_the_repository(installed_wheel):
    printed = _run([str(installed_wheel["bin"] / "gflv2"), "recipes"], installed_wheel["cwd"], installed_wheel["env"])
    for name in ("gflv2_r50_fpn_1x_coco", "gflv2_r2_101_dcn_fpn_ms2x_coco", "gflv2_tiny_r18_demo"):
        assert name in printed


def test_wheel_install_runs_the_demo_for_one_short_epoch(installed_wheel):
    output = installed_wheel["cwd"] / "demo"
    printed = _run(
        [str(installed_wheel["bin"] / "gflv2"), "demo", "--quick", "--output", str(output)],
        installed_wheel["cwd"],
        installed_wheel["env"],
    )
    assert "held-out COCO AP" in printed
    assert (output / "work_dir_quick" / "preset" / "model.weights.h5").is_file()
