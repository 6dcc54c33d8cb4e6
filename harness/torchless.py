"""Import mlx-lm without importing torch.

``import mlx_lm`` imports transformers (for its tokenizers), and transformers
imports torch whenever torch is installed, which on a GPU machine costs
seconds per process (an H200 host: 11.4 of 14.5 s of ``import mlx.core,
mlx_lm``).  Nothing the harness runs needs torch.  While mlx-lm's package
executes, ``install`` makes ``torch`` look absent (``sys.modules["torch"] =
None``: ``importlib.util.find_spec`` answers None and transformers takes its
torch-less branches); afterwards torch imports as usual for whoever asks.

Installed by the processes the harness owns: the ``harness`` command and every
worker it starts (``command`` wraps their module).  Never by the pytest plugin,
whose process is the user's.  ``MLXTH_IMPORT_TORCH=1`` turns it off.

    python -m mlxth.harness.torchless MODULE [ARGS...]   # MODULE as __main__, hook installed
"""

import importlib.util
import os
import runpy
import sys

OFF_ENV = "MLXTH_IMPORT_TORCH"
_HIDDEN = "torch"


def wanted() -> bool:
    return (os.environ.get(OFF_ENV, "").strip() not in ("1", "true", "yes")
            and "mlx_lm" not in sys.modules and _HIDDEN not in sys.modules)


class _MlxLmWithoutTorch:
    """A one-shot meta-path finder: finds ``mlx_lm`` as usual and runs its package with torch hidden."""

    def find_spec(self, name, path=None, target=None):
        if name != "mlx_lm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module") or not wanted():
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            sys.modules[_HIDDEN] = None
            try:
                run(module)
            finally:
                if _HIDDEN in sys.modules and sys.modules[_HIDDEN] is None:
                    del sys.modules[_HIDDEN]

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Hide torch from the first ``import mlx_lm`` of this process (no-op when already imported or turned off)."""
    if wanted() and not any(isinstance(f, _MlxLmWithoutTorch) for f in sys.meta_path):
        sys.meta_path.insert(0, _MlxLmWithoutTorch())


def command(module: str, *args: str) -> list:
    """The command line that runs ``python -m MODULE ARGS`` with the hook installed."""
    return [sys.executable, "-m", __name__, module, *map(str, args)]


def _main() -> None:
    if len(sys.argv) < 2:
        sys.exit(f"usage: python -m {__name__} MODULE [ARGS...]")
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    install()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _main()
