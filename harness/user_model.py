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
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ModelFolderError("no *.safetensors weights")
    for file in weights:
        _check_safetensors(file)
    _check_index(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelFolderError(f"no tokenizer (one of {', '.join(TOKENIZER_FILES)})")
    _check_vocab_size(folder, config)
    return folder.resolve()


def _check_safetensors(file: Path):
    """A safetensors file's header only: an 8-byte little-endian length, that many bytes of JSON
    (a dict of tensors), every tensor's data inside the file."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            head = fh.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else None
            if length is None or length + 8 > size:
                raise ModelFolderError(f"{file.name}: not a safetensors file (its header length does not fit its "
                                       f"{size} bytes)")
            try:
                header = json.loads(fh.read(length))
            except (ValueError, UnicodeDecodeError):
                header = None
    except OSError as err:
        raise ModelFolderError(f"{file.name}: cannot be read ({err.strerror})") from None
    if not isinstance(header, dict):
        raise ModelFolderError(f"{file.name}: not a safetensors file (its header is not a JSON object)")
    offsets = [t.get("data_offsets") for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    end = max((o[1] for o in offsets if isinstance(o, list) and len(o) == 2 and isinstance(o[1], int)), default=0)
    if end > size - 8 - length:
        raise ModelFolderError(f"{file.name}: truncated (its tensors need {end + 8 + length} bytes, the file has "
                               f"{size})")


def _check_index(folder: Path):
    """``model.safetensors.index.json``, where there is one, names only shards in the folder."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return
    try:
        weight_map = json.loads(index.read_text()).get("weight_map", {})
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise ModelFolderError(f"{index.name}: invalid JSON or no weight_map") from None
    missing = sorted({s for s in weight_map.values() if isinstance(s, str) and not (folder / s).is_file()})
    if missing:
        raise ModelFolderError(f"{index.name} names shards not in the folder: {', '.join(missing)}")


def _largest_token_id(folder: Path):
    """The largest id ``tokenizer.json`` gives (its vocabulary and added tokens); None without one."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None  # tokenizer.model and the like: not read here
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ModelFolderError("tokenizer.json: invalid JSON") from None
    vocab = data.get("model", {}).get("vocab") if isinstance(data, dict) else None
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel: token -> id
        ids = [i for i in vocab.values() if isinstance(i, int)]
    elif isinstance(vocab, list):  # Unigram: [token, score] in id order
        ids = [len(vocab) - 1] if vocab else []
    else:
        return None
    ids += [t["id"] for t in data.get("added_tokens") or () if isinstance(t, dict) and isinstance(t.get("id"), int)]
    return max(ids, default=None)


def _check_vocab_size(folder: Path, config: dict):
    """Every id the tokenizer gives has a row in the embedding (``vocab_size``, or
    ``text_config.vocab_size`` where the model nests its language model's settings)."""
    key, vocab_size = "vocab_size", config.get("vocab_size")
    text = config.get("text_config")
    if isinstance(text, dict) and "vocab_size" in text:  # as mlx-lm reads e.g. qwen3_5's
        key, vocab_size = "text_config.vocab_size", text["vocab_size"]
    if not isinstance(vocab_size, int):
        return
    largest = _largest_token_id(folder)
    if largest is not None and largest >= vocab_size:
        raise ModelFolderError(f"the tokenizer's ids reach {largest} but config.json's {key} is {vocab_size}")


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
