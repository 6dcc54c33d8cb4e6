"""The harness's own processes import mlx-lm without importing torch (``harness/torchless.py``).

A stand-in ``torch`` distribution (metadata that says 2.9.0, a package that
raises on import) is put first on ``PYTHONPATH``: any process that imports
torch fails with its message.  Plain ``import mlx_lm`` must hit it (else this
transformers never imports torch and there is nothing to check); the
``harness`` command, its pool workers and the ranks of a data-parallel case
must not.
"""

import os
import subprocess
import sys

import pytest

from support import REPOSITORY

MARK = "stand-in torch imported"


@pytest.fixture(scope="module")
def fake_torch(tmp_path_factory):
    root = tmp_path_factory.mktemp("faketorch")
    (root / "torch").mkdir()
    (root / "torch" / "__init__.py").write_text(f"__version__ = '2.9.0'\nraise ImportError({MARK!r})\n")
    info = root / "torch-2.9.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.9.0\n")
    (info / "RECORD").write_text("")
    return root


def _env(fake_torch, **extra):
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(fake_torch), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _python(fake_torch, code, **extra):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(fake_torch, **extra),
                          timeout=300)


@pytest.fixture(scope="module")
def transformers_imports_torch(fake_torch):
    plain = _python(fake_torch, "import mlx_lm")
    if MARK not in plain.stderr:
        pytest.skip("this transformers does not import torch when mlx-lm is imported: nothing to hide")


def test_harness_command_imports_mlx_lm_without_torch(fake_torch, transformers_imports_torch):
    # the command imports mlx-lm when it first needs it (a fixture, a target): the hook waits for that
    proc = _python(fake_torch, "import sys, mlxth.harness.cli\nimport mlx_lm\n"
                               "assert 'torch' not in sys.modules\n")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_torch_imports_as_usual_afterwards(fake_torch, transformers_imports_torch):
    """Only mlx-lm's own import is spared torch: a later ``import torch`` reaches the real package."""
    proc = _python(fake_torch, "import mlxth.harness.cli\nimport mlx_lm\nimport torch\n")
    assert proc.returncode != 0 and MARK in proc.stderr, proc.stderr[-2000:]


def test_switched_off_by_environment(fake_torch, transformers_imports_torch):
    proc = _python(fake_torch, "import mlxth.harness.cli\nimport mlx_lm", MLXTH_IMPORT_TORCH="1")
    assert proc.returncode != 0 and MARK in proc.stderr, proc.stderr[-2000:]


def test_module_launcher_runs_the_module_as_main(fake_torch, transformers_imports_torch, tmp_path):
    (tmp_path / "probe_main.py").write_text("import sys, mlx_lm\n"
                                            "assert __name__ == '__main__'\n"
                                            "print('argv', sys.argv[1:], 'torch' in sys.modules)\n")
    env = _env(fake_torch)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    proc = subprocess.run([sys.executable, "-m", "mlxth.harness.torchless", "probe_main", "a", "--b"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "argv ['a', '--b'] False" in proc.stdout


@pytest.mark.parametrize("ranks", [1, 2])
def test_workers_and_ranks_never_import_torch(fake_torch, transformers_imports_torch, tmp_path, ranks):
    """A pool worker (1 rank) and mlx.launch's rank processes (2 ranks) with torch poisoned: the case passes."""
    proc = subprocess.run([sys.executable, "-m", "mlxth.harness.cli", "run", "--trainer", "kto", "--fixture",
                           "tiny-llama", "--variant", "fp32", "--scenario", "plain", "--steps", "2",
                           "--ranks", str(ranks), "--reports", str(tmp_path)],
                          capture_output=True, text=True, env=_env(fake_torch), cwd=REPOSITORY, timeout=600)
    assert "1 passed, 0 failed, 0 errors" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
