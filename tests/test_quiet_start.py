"""TensorFlow's start-up notices are hidden in every entry point: ``gflv2``, recipe scripts, ``scripts/*.sh``."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gflv2_keras.utils import cli

REPO = Path(__file__).resolve().parents[1]
# What TensorFlow writes while it loads and first runs: CUDA probing (cuInit fails on machines
# without a GPU), the oneDNN notice, absl / TSL log lines ("I0000 00:00:..." or "2026-... I tensorflow/...").
NOTICES = re.compile(r"cuInit|cuda|oneDNN|TF_ENABLE_ONEDNN_OPTS|absl|^[IWEF]\d{4} |^\S+ \S+: [IWEF] ", re.M | re.I)
FIRST_OP = "import tensorflow as tf; print(float(tf.reduce_sum(tf.ones([2, 2]))))"


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    return {**env, **extra}


@pytest.mark.slow  # one more TensorFlow start; the default run checks the same under the scripts' setting
def test_a_command_s_first_tensorflow_use_is_silent():
    """``run_command`` (every ``gflv2`` command, recipe script and script using it), TF_CPP_MIN_LOG_LEVEL unset."""
    probe = ("import sys; from gflv2_keras.utils.cli import run_command\n"
             f"sys.exit(run_command('probe', lambda: exec({FIRST_OP!r})))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0 and result.stdout.strip() == "4.0", result.stderr[-2000:]
    assert not NOTICES.search(result.stderr), result.stderr[-2000:]


def test_the_scripts_hide_tensorflow_s_notices():
    """Under the level a script exports, a command's first TensorFlow use prints nothing.

    The import-time lines (oneDNN notice, CUDA driver probing) come before absl's logging is set
    up, whatever the level: ``run_command`` captures them (``gflv2 demo``), pytest's capture does
    for the tests. The level hides what comes later: ``TF_CPP_MIN_LOG_LEVEL=2`` (the scripts'
    former value) still lets "E... failed call to cuInit" through on a machine without a GPU.
    """
    exports = set()
    for script in ("demo.sh", "test.sh"):
        lines = [line for line in (REPO / "scripts" / script).read_text().splitlines()
                 if line.startswith("export TF_CPP_MIN_LOG_LEVEL=")]  # fmt: skip
        assert len(lines) == 1, f"scripts/{script} sets no TF_CPP_MIN_LOG_LEVEL"
        exports.add(lines[0])
    probe = f"from gflv2_keras.utils.cli import run_command; run_command('probe', lambda: exec({FIRST_OP!r}))"
    for line in sorted(exports):  # one TensorFlow start per distinct setting (the scripts share one)
        result = subprocess.run(["bash", "-c", f'{line}\nexec "{sys.executable}" -c "{probe}"'],
                                capture_output=True, text=True, timeout=300, env=_env())  # fmt: skip
        assert result.returncode == 0 and result.stdout.strip() == "4.0", result.stderr[-2000:]
        assert not NOTICES.search(result.stderr), (line, result.stderr[-2000:])


@pytest.fixture
def noisy_module(tmp_path, monkeypatch):
    """``noisy_fake``, a ``NOISY_MODULES`` entry that writes to file descriptor 2 when imported (as TensorFlow does)."""
    (tmp_path / "noisy_fake.py").write_text("import os, sys\nos.write(2, b'C++ notice\\n')\n"
                                            "if os.environ.get('NOISY_FAIL'):\n    raise ImportError('broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "NOISY_MODULES", ("noisy_fake",))
    yield
    sys.modules.pop("noisy_fake", None)


def test_the_import_is_captured_wherever_the_command_does_it(noisy_module, capfd):
    def body():
        print("before", file=sys.stderr, flush=True)
        import noisy_fake

        print("after", file=sys.stderr, flush=True)
        return 0 if noisy_fake.__loader__.__class__.__name__ != "_QuietLoader" else 1

    assert cli.run_command("probe", body) == 0
    assert capfd.readouterr().err.split() == ["before", "after"]
    assert not any(isinstance(f, cli._QuietImportFinder) for f in sys.meta_path)  # removed after the command


def test_a_failing_import_shows_what_it_wrote(noisy_module, capfd, monkeypatch):
    monkeypatch.setenv("NOISY_FAIL", "1")

    def body():
        import noisy_fake  # noqa: F401

    with pytest.raises(ImportError):
        cli.run_command("probe", body)
    assert "C++ notice" in capfd.readouterr().err


def test_a_check_runs_first_and_its_mistake_is_one_line(noisy_module, capfd):
    ran = []

    def check():
        raise ValueError("--data: nope")

    assert cli.run_command("probe", lambda: ran.append(1), check=check) == cli.EXIT_USER_ERROR
    assert ran == [] and "noisy_fake" not in sys.modules
    assert capfd.readouterr().err == "gflv2 probe: error: --data: nope\n"


def test_verbose_shows_the_notices(noisy_module, capfd):
    def body():
        import noisy_fake  # noqa: F401

    assert cli.run_command("probe", body, verbose=True) == 0
    assert "C++ notice" in capfd.readouterr().err
