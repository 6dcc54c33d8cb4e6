"""``[tool.mlx-trainer-harness]``: the project root, every key as a default, flags over it, and bad tables."""

import json
import textwrap

import pytest
from click.testing import CliRunner

from mlxth.harness.cli import main
from mlxth.harness.project import ConfigError, load_config, project_root
from support import PLANTED_TARGETS


def _write(root, table: str):
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(table))
    return root


def _reports(folder):
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*/report.json"))]


def test_root_is_found_as_pytest_finds_its_rootdir(tmp_path):
    root = _write(tmp_path / "lib", '[tool.mlx-trainer-harness]\nsnapshots = "goldens"\n')
    deep = root / "src" / "pkg"
    deep.mkdir(parents=True)
    # A nearer pyproject.toml without the table (a sub-package) does not take the root away ...
    _write(root / "src", '[project]\nname = "sub"\n')
    assert project_root(deep) == root
    assert load_config(deep).snapshots == root / "goldens"
    assert load_config(deep).reports == root / "reports"
    # ... but with no table anywhere, the nearest pyproject.toml is the root, else the folder itself.
    plain = _write(tmp_path / "plain", '[project]\nname = "plain"\n')
    (plain / "a").mkdir()
    assert project_root(plain / "a") == plain
    assert load_config(plain / "a").snapshots == plain / "snapshots"
    (tmp_path / "bare").mkdir()
    assert project_root(tmp_path / "bare") == tmp_path / "bare"


def test_the_table_is_every_commands_default_from_any_folder(tmp_path, monkeypatch):
    root = _write(tmp_path / "lib", """\
        [tool.mlx-trainer-harness]
        target = "adapters/planted.py:SkipTrain"
        snapshots = "goldens"
        reports = "out"
        trainers = ["dpo"]
        fixtures = ["tiny-llama"]
        steps = 2
        [tool.mlx-trainer-harness.settings.dpo]
        learning_rate = 5e-4
        [tool.mlx-trainer-harness.hyperparameters.dpo]
        beta = 0.2
        """)
    (root / "adapters").mkdir()
    (root / "adapters" / "planted.py").write_text(PLANTED_TARGETS.read_text())
    (root / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(root / "deep" / "er")  # paths are relative to the root, not to here

    # The table has no scenario key: the plain case (the trainer's defaults, where the table's settings apply).
    result = CliRunner().invoke(main, ["run", "--scenario", "plain", "--update-snapshots"], catch_exceptions=False)
    (report,) = _reports(root / "out")
    (case,) = report["cases"]
    # The planted target skips model.train(): the table's target ran, and the case failed for it.
    assert result.exit_code == 1, result.output
    assert case["id"] == "planted-skip-train/dpo/tiny-llama/fp32" and case["failure"]["kind"] == "train-mode"
    assert len(case["steps"]) == 2
    assert case["case"]["settings"]["learning_rate"] == 5e-4 and case["case"]["settings"]["extra"] == {"beta": 0.2}
    assert not (root / "goldens").exists()  # a failing case records no golden

    # Flags override the table: another target, trainer, steps and report folder.
    # (--reports relative to the working folder, which the case's worker process is not in.)
    result = CliRunner().invoke(main, ["run", "--scenario", "plain", "--target", "reference", "--trainer", "orpo",
                                       "--steps", "1", "--reports", "here", "--update-snapshots"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (case,) = _reports(root / "deep" / "er" / "here")[0]["cases"]
    assert case["id"] == "reference/orpo/tiny-llama/fp32" and len(case["steps"]) == 1
    assert (root / "goldens" / "cpu" / "reference" / "orpo" / "tiny-llama--fp32.json").is_file()


BAD = [
    ('snapshot = "x"', "snapshot: unknown key"),
    ('trainers = ["ppo"]', "trainers: unknown 'ppo'; known: dpo"),
    ('fixtures = "tiny-gpt"', "fixtures: unknown 'tiny-gpt'"),
    ("variants = [1]", "variants: expected a list of names"),
    ("steps = 0", "steps: expected an integer from 1 to 1000, got 0"),
    ('steps = "3"', "steps: expected an integer from 1 to 1000, got '3'"),
    ('target = "missing.py:Target"', "target: missing.py does not exist"),
    ('target = ""', "target: expected a non-empty string"),
    ('reports = 3', "reports: expected a non-empty string, got 3"),
    ('models = ["no-such-model"]', "models: no-such-model: no such folder"),
    ("[tool.mlx-trainer-harness.settings.dpo]\ndtype = 'bfloat16'", "settings.dpo.dtype: not a per-trainer "
                                                                     "setting (a variant sets it)"),
    ("[tool.mlx-trainer-harness.settings.dpo]\nbatch_size = 0", "settings.dpo.batch_size: must be positive"),
    ("[tool.mlx-trainer-harness.settings.dpo]\nbatch_size = 2.5", "settings.dpo.batch_size: expected an integer"),
    ("[tool.mlx-trainer-harness.settings.dpo]\nlearning_rate = true", "settings.dpo.learning_rate: expected a "
                                                                       "number"),
    ("[tool.mlx-trainer-harness.settings.ppo]\nseed = 1", "settings.ppo: unknown trainer"),
    ("[tool.mlx-trainer-harness.hyperparameters.dpo.beta]\nx = 1", "hyperparameters.dpo.beta: expected a value"),
]


@pytest.mark.parametrize("table, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_a_bad_key_or_value_names_the_file_and_key(tmp_path, table, message):
    root = _write(tmp_path / "lib", "[tool.mlx-trainer-harness]\n" + table + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(root)
    assert str(err.value).startswith(f"{root / 'pyproject.toml'}: [tool.mlx-trainer-harness] {message}"), err.value


def test_a_bad_table_is_a_one_line_usage_error(tmp_path, monkeypatch):
    root = _write(tmp_path / "lib", "[tool.mlx-trainer-harness]\nsteps = 0\n")
    monkeypatch.chdir(root)
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 2
    assert f"Error: {root / 'pyproject.toml'}: [tool.mlx-trainer-harness] steps: expected an integer" in result.output
    assert "Traceback" not in result.output
    (root / "pyproject.toml").write_text("[tool.mlx-trainer-harness\n")
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 2 and f"{root / 'pyproject.toml'}: invalid TOML" in result.output
