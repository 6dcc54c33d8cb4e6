"""``--model PATH``: a user's mlx-lm model folder runs the checks the fixtures get; bad folders are one line."""

import json
import shutil

import pytest
from click.testing import CliRunner

from mlxth.fixtures import fixture_path
from mlxth.harness.cli import main
from mlxth.harness.judge import golden


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
