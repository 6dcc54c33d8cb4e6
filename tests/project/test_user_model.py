"""``--model PATH``: a user's mlx-lm model folder runs the checks the fixtures get; bad folders are one line."""

import json
import shutil
from dataclasses import replace

import pytest
from click.testing import CliRunner

from mlxth.fixtures import fixture_path
from mlxth.harness.cli import main
from mlxth.harness.judge import golden
from mlxth.harness.model import Case, case_settings
from mlxth.harness.run import ranks
from mlxth.harness.user_model import ModelFolderError, check_model_folder


def _model_folder(where, name="my-llama"):
    """tiny-llama's weights under another name, its tokenizer stripped of its padding token."""
    folder = where / name
    shutil.copytree(fixture_path("tiny-llama"), folder)
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        data = json.loads((folder / file).read_text())
        data.pop("pad_token", None)
        (folder / file).write_text(json.dumps(data))
    return folder


def _run(tmp_path, *args):
    reports = tmp_path / "reports"
    result = CliRunner().invoke(main, ["run", "--reports", str(reports), *args], catch_exceptions=False)
    found = sorted(reports.glob("*/report.json"))
    return result, json.loads(found[-1].read_text()) if found else None


def test_a_model_folder_is_a_case_with_every_check(tmp_path):
    folder = _model_folder(tmp_path)
    snapshots = tmp_path / "snaps"
    # The plain cases: the folder's beside the fixture's (the fixture's scenarios are not what this compares).
    result, report = _run(tmp_path, "--model", str(folder), "--fixture", "tiny-llama", "--trainer", "dpo",
                          "--scenario", "plain", "--snapshots", str(snapshots), "--update-snapshots")
    assert result.exit_code == 0, result.output
    assert len(report["cases"]) == 2
    mine, fixture = (next(c for c in report["cases"] if c["case"]["fixture"] == f) for f in ("my-llama", "tiny-llama"))
    assert mine["id"] == "reference/dpo/my-llama/fp32"
    assert {c["name"]: c["status"] for c in mine["checks"]} == {c["name"]: c["status"] for c in fixture["checks"]}
    assert all(c["status"] == "pass" for c in mine["checks"]), mine["checks"]
    # The same weights from the user's folder (its own tokenizer, padding with EOS) train as the fixture does.
    rtol, atol, _ = golden.tolerance(fixture["environment"], mine["environment"], "float32")
    assert golden.first_divergence(fixture["steps"], mine["steps"], rtol, atol) is None
    backend = mine["environment"]["backend"]
    assert (snapshots / backend / "reference" / "dpo" / "my-llama--fp32.json").is_file()
    # Without --fixture only the model runs, and it is held to the golden just recorded.
    result, report = _run(tmp_path, "--model", str(folder), "--trainer", "dpo", "--snapshots", str(snapshots),
                          "--strict")
    assert result.exit_code == 0, result.output
    assert [c["id"] for c in report["cases"]] == ["reference/dpo/my-llama/fp32"]


def _broken(tmp_path, what):
    folder = _model_folder(tmp_path, "broken")
    if what == "no config":
        (folder / "config.json").unlink()
    elif what == "bad json":
        (folder / "config.json").write_text("{")
    elif what == "no model_type":
        config = json.loads((folder / "config.json").read_text())
        del config["model_type"]
        (folder / "config.json").write_text(json.dumps(config))
    elif what == "architecture":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "not-a-real-arch"}))
    elif what == "no weights":
        (folder / "model.safetensors").unlink()
    elif what == "no tokenizer":
        (folder / "tokenizer.json").unlink()
    elif what in ("vocab too small", "nested vocab too small"):
        # tiny-llama's tokenizer gives ids 0-258 (256 bytes, 3 special tokens) for 260 embedding rows.
        config = json.loads((folder / "config.json").read_text())
        text = {"text_config": {"vocab_size": 100}} if what.startswith("nested") else {"vocab_size": 128}
        (folder / "config.json").write_text(json.dumps({**config, **text}))
    elif what == "corrupt weights":
        (folder / "model.safetensors").write_text("garbage")
    elif what == "header not json":
        (folder / "model.safetensors").write_bytes((7).to_bytes(8, "little") + b"garbage" + bytes(64))
    elif what == "truncated weights":
        weights = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(weights[:-100])
    elif what == "missing shard":
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    return folder


BAD = [
    ("missing", "no such folder"),
    ("file", "not a folder"),
    ("no config", "no config.json: not an mlx-lm model folder"),
    ("bad json", "config.json: invalid JSON"),
    ("no model_type", "config.json: no model_type"),
    ("architecture", "config.json: model_type 'not-a-real-arch' is not an architecture mlx-lm"),
    ("no weights", "no *.safetensors weights"),
    ("no tokenizer", "no tokenizer (one of tokenizer.json"),
    ("vocab too small", "the tokenizer's ids reach 258 but config.json's vocab_size is 128"),
    ("nested vocab too small", "the tokenizer's ids reach 258 but config.json's text_config.vocab_size is 100"),
    ("corrupt weights", "model.safetensors: not a safetensors file (its header length does not fit its 7 bytes)"),
    ("header not json", "model.safetensors: not a safetensors file (its header is not a JSON object)"),
    ("truncated weights", "model.safetensors: truncated (its tensors need "),  # more bytes than it has
    ("missing shard", "model.safetensors.index.json names shards not in the folder: model-00002-of-00002"),
]


@pytest.mark.parametrize("what, message", BAD, ids=[w for w, _ in BAD])
def test_a_bad_model_folder_is_a_one_line_usage_error(tmp_path, what, message):
    if what == "missing":
        path = tmp_path / "nowhere"
    elif what == "file":
        path = _model_folder(tmp_path) / "config.json"
    else:
        path = _broken(tmp_path, what)
    result, report = _run(tmp_path, "--model", str(path))
    assert result.exit_code == 2
    assert f"Error: --model {path}: {message}" in result.output
    assert report is None and "Traceback" not in result.output


def test_a_model_named_like_a_fixture_is_refused(tmp_path):
    folder = _model_folder(tmp_path, "tiny-qwen35")
    result, _ = _run(tmp_path, "--model", str(folder))
    assert result.exit_code == 2 and "its name 'tiny-qwen35' is already a fixture's" in result.output


def test_the_vocab_size_must_cover_the_tokenizers_ids_and_only_tokenizer_json_is_read(tmp_path):
    folder = _model_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 259}))  # ids 0-258: just enough
    assert check_model_folder(folder) == folder.resolve()
    # A Unigram vocabulary is a list in id order: 300 entries reach id 299.
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = [[f"t{i}", -1.0] for i in range(300)]
    unigram = {**tokenizer, "added_tokens": [], "model": {"type": "Unigram", "vocab": vocab}}
    (folder / "tokenizer.json").write_text(json.dumps(unigram))
    with pytest.raises(ModelFolderError, match="the tokenizer's ids reach 299 but config.json's vocab_size is 259"):
        check_model_folder(folder)
    # Without tokenizer.json (a sentencepiece tokenizer.model, say) the largest id is not guessed.
    (folder / "tokenizer.json").rename(folder / "tokenizer.model")
    assert check_model_folder(folder) == folder.resolve()


def test_a_single_process_that_dies_is_named_the_cases_process_not_rank_0(tmp_path):
    one, two = (Case("reference", "dpo", "tiny-llama", "fp32", replace(case_settings("dpo", "fp32", 3), ranks=r))
                for r in (1, 2))
    (tmp_path / "rank0.steps").write_text("1\n")
    died = ranks.judge(one, tmp_path, "ValueError: [load_safetensors] boom\n", False, 1.0, 60, returncode=1)
    assert died["failure"]["message"] == ("the case's process died in step 2 (exited with status 1). "
                                          "ValueError: [load_safetensors] boom")
    # Data-parallel ranks keep their names.
    log = "[WARN] Node with rank 0 exited with code 1\n[WARN] Node with rank 1 exited with code -15\n"
    assert ranks.judge(two, tmp_path, log, False, 1.0, 60)["failure"]["message"].startswith(
        "rank 0 died in step 2 (exited with status 1); mlx.launch stopped rank(s) 1.")
    (tmp_path / "rank0.json").write_text(json.dumps({"rank": 0, "status": "ok", "error": None, "fingerprint": {}}))
    assert ranks.judge(one, tmp_path, "boom\n", False, 1.0, 60, returncode=0)["failure"]["message"] == (
        "the case's process left no result. boom")
