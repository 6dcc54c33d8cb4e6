"""A user's own mlx-lm model folder as a case, beside the fixtures (``harness run --model PATH``).

The folder is what ``mlx_lm.load`` reads from disk: ``config.json`` with a
``model_type`` mlx-lm implements, ``*.safetensors`` weights and the model's
own tokenizer.  It is checked before any case starts, so a bad path or an
unsupported architecture is one clear line; a case loads it as a fixture is
loaded (mlx-lm's loader, inference mode).  mlx-lm is imported only when a
folder is checked or loaded: it brings transformers, too slow for every start.
"""

import json
from importlib.metadata import version
from pathlib import Path

from ..fixtures import load_fixture

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tiktoken.model")


class ModelFolderError(ValueError):
    """A model folder that mlx-lm cannot load; the message says what is missing or wrong."""


def check_model_folder(path) -> Path:
    """The folder, resolved, or ``ModelFolderError`` saying why it is not a loadable mlx-lm model."""
    from mlx_lm.utils import _get_classes  # mlx-lm's own architecture lookup

    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelFolderError("no such folder")
    if not folder.is_dir():
        raise ModelFolderError("not a folder (give the model's folder, not a file in it)")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelFolderError("no config.json: not an mlx-lm model folder")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"config.json: invalid JSON ({err})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or not model_type:
        raise ModelFolderError("config.json: no model_type")
    try:
        _get_classes(config)
    except (ValueError, ImportError):
        raise ModelFolderError(f"config.json: model_type {model_type!r} is not an architecture mlx-lm "
                               f"{version('mlx-lm')} implements") from None
    if not any(folder.glob("*.safetensors")):
        raise ModelFolderError("no *.safetensors weights")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelFolderError(f"no tokenizer (one of {', '.join(TOKENIZER_FILES)})")
    return folder.resolve()


def load_model_folder(path, model_config=None):
    """``(model, tokenizer)`` from a model folder, as ``mlx_lm.load`` gives them (inference mode).

    A tokenizer without a padding token pads with its end-of-sequence token
    (padding is masked out of every loss)."""
    from mlx_lm.utils import load_model, load_tokenizer

    model, config = load_model(Path(path), model_config=model_config)
    tokenizer = load_tokenizer(Path(path), eos_token_ids=config.get("eos_token_id"))
    if tokenizer.pad_token_id is None:
        tokenizer._tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_case_model(case, model_config=None):
    """The model and tokenizer of a case: its user model folder, else its fixture."""
    if case.model_path:
        return load_model_folder(case.model_path, model_config)
    return load_fixture(case.fixture, model_config)
