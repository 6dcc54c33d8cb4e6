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
    ("[tool.mlx-trainer-harness.settings.dpo]\nlearning_rate = nan", "settings.dpo.learning_rate: expected a "
                                                                      "finite number, got nan"),
    ("[tool.mlx-trainer-harness.settings.dpo]\nseed = -1", "settings.dpo.seed: expected an integer from 0 to "
                                                            "2**32 - 1, got -1"),
    ("[tool.mlx-trainer-harness.hyperparameters.dpo]\nbeta = 'high'", "hyperparameters.dpo.beta: expected a finite "
                                                                        "number, got 'high'"),
    ("[tool.mlx-trainer-harness.hyperparameters.dpo]\nbeta = inf", "hyperparameters.dpo.beta: expected a finite "
                                                                     "number, got inf"),
    ("[tool.mlx-trainer-harness.hyperparameters.dpo]\nloss_type = 'bogus'", "hyperparameters.dpo.loss_type: "
                                                                              "expected one of 'sigmoid', 'hinge', "
                                                                              "'ipo', got 'bogus'"),
    ("[tool.mlx-trainer-harness.hyperparameters.grpo]\nnum_generations = 2.5", "hyperparameters.grpo."
                                                                                "num_generations: expected an "
                                                                                "integer, got 2.5"),
    ("[tool.mlx-trainer-harness.hyperparameters.grpo]\nscale_rewards = 1", "hyperparameters.grpo.scale_rewards: "
                                                                            "expected a string, got 1"),
    ("[tool.mlx-trainer-harness.hyperparameters.dpo]\nlearning_rate = 0.1", "hyperparameters.dpo.learning_rate: "
                                                                             "a case setting, not a hyper-parameter: "
                                                                             "settings.dpo sets it"),
    ("[tool.mlx-trainer-harness.hyperparameters.dpo]\nlora_rank = 8", "hyperparameters.dpo.lora_rank: a case "
                                                                       "setting, not a hyper-parameter: a variant"),
    ('scenarios = ["smoothe"]', "scenarios: unknown 'smoothe'; known: plain"),
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


def _run(root, monkeypatch, *args):
    monkeypatch.chdir(root)
    return CliRunner().invoke(main, ["run", *args], catch_exceptions=False)


def test_the_table_names_scenarios_and_a_selection_of_nothing_is_an_error(tmp_path, monkeypatch):
    root = _write(tmp_path / "lib", """\
        [tool.mlx-trainer-harness]
        trainers = ["dpo"]
        fixtures = ["tiny-llama"]
        scenarios = ["accumulation"]
        """)
    result = _run(root, monkeypatch, "--update-snapshots")
    assert result.exit_code == 0, result.output
    (case,) = _reports(root / "reports")[0]["cases"]
    assert case["id"] == "reference/dpo/tiny-llama/fp32/accumulation"
    # The smoothed scenario runs on tiny-warm, which the table leaves out: nothing to run is no pass.
    result = _run(root, monkeypatch, "--scenario", "smoothed", "--strict")
    assert result.exit_code == 2
    assert "no case selected: no reference case has trainers dpo; fixtures tiny-llama; scenarios smoothed" \
        in result.output
    assert len(_reports(root / "reports")) == 1


def test_a_hyperparameter_that_is_no_standard_name_is_refused_or_said(tmp_path, monkeypatch):
    root = _write(tmp_path / "lib", """\
        [tool.mlx-trainer-harness]
        trainers = ["dpo"]
        [tool.mlx-trainer-harness.hyperparameters.dpo]
        betta = 0.5
        """)
    result = _run(root, monkeypatch, "--fixture", "tiny-llama", "--scenario", "plain")
    assert result.exit_code == 2
    assert (f"{root / 'pyproject.toml'}: [tool.mlx-trainer-harness] hyperparameters.dpo.betta: not a "
            "hyper-parameter of the reference dpo trainer; known: weight_decay, ") in result.output
    assert "max_grad_norm" in result.output and result.output.rstrip().endswith("beta, loss_type, label_smoothing")
    # Another target may have fields of its own: passed on, and said.
    (root / "mine.py").write_text(PLANTED_TARGETS.read_text())
    result = _run(root, monkeypatch, "--target", "mine.py:SkipTrain", "--fixture", "tiny-llama", "--scenario",
                  "plain")
    assert ("warning: " + f"{root / 'pyproject.toml'}: [tool.mlx-trainer-harness] hyperparameters.dpo.betta: "
            "not a standard name; passed to planted-skip-train as it is") in result.output


def test_the_tables_golden_folder_is_held_as_the_flag_is(tmp_path, monkeypatch):
    root = _write(tmp_path / "lib", '[tool.mlx-trainer-harness]\nsnapshots = "snapshot"\ntrainers = ["orpo"]\n')
    (root / "snapshots").mkdir()  # the folder meant; the table has a typo
    result = _run(root, monkeypatch, "--fixture", "tiny-llama", "--scenario", "plain")
    assert result.exit_code == 2
    assert (f"{root / 'pyproject.toml'}: [tool.mlx-trainer-harness] snapshots: no such folder {root / 'snapshot'} "
            "(to record goldens there, add --update-snapshots)") in result.output
    (root / "README.md").write_text("x")
    (root / "pyproject.toml").write_text('[tool.mlx-trainer-harness]\nsnapshots = "README.md"\n')
    result = _run(root, monkeypatch, "--fixture", "tiny-llama", "--scenario", "plain", "--update-snapshots")
    assert result.exit_code == 2
    assert f"snapshots: {root / 'README.md'} is not a folder" in result.output
    assert not (root / "reports").exists()


def _dpo_only_target(path):
    path.write_text("from mlxth.harness.adapters.reference import ReferenceTarget\n\n\n"
                    "class DPOOnly(ReferenceTarget):\n    name = 'dpo-only'\n\n"
                    "    def trainers(self):\n        return ('dpo',)\n")


def test_a_table_value_that_the_target_refuses_names_the_key(tmp_path, monkeypatch):
    root = _write(tmp_path / "lib", '[tool.mlx-trainer-harness]\ntarget = "mine.py:DPOOnly"\ntrainers = ["orpo"]\n')
    _dpo_only_target(root / "mine.py")
    table = f"{root / 'pyproject.toml'}: [tool.mlx-trainer-harness]"
    result = _run(root, monkeypatch)
    assert result.exit_code == 2 and f"{table} trainers: unknown trainer 'orpo'; known: dpo" in result.output
    result = _run(root, monkeypatch, "--trainer", "orpo")  # the flag's own value: no key to name
    assert result.exit_code == 2 and "Error: unknown trainer 'orpo'; known: dpo" in result.output
    (root / "pyproject.toml").write_text('[tool.mlx-trainer-harness]\ntarget = "mine.py:Nope"\n')
    for command in (["run"], ["bench", "--min-rounds", "1"]):
        result = CliRunner().invoke(main, command, catch_exceptions=False)
        assert result.exit_code == 2
        assert f"{table} target: target spec " in result.output and "has no attribute 'Nope'" in result.output


def test_list_shows_the_projects_target_and_refuses_a_broken_table(tmp_path, monkeypatch):
    root = _write(tmp_path / "lib", '[tool.mlx-trainer-harness]\ntarget = "mine.py:DPOOnly"\n')
    _dpo_only_target(root / "mine.py")
    monkeypatch.chdir(root)
    result = CliRunner().invoke(main, ["list"], catch_exceptions=False)
    assert result.exit_code == 0
    (line,) = [x for x in result.output.splitlines() if "(the project's)" in x]
    assert line.split() == [f"{root / 'mine.py'}:DPOOnly", "(the", "project's)", "dpo"]
    (root / "pyproject.toml").write_text("[tool.mlx-trainer-harness\n")
    result = CliRunner().invoke(main, ["list"], catch_exceptions=False)
    assert result.exit_code == 2 and f"{root / 'pyproject.toml'}: invalid TOML" in result.output


def test_conformance_takes_the_projects_target_and_says_when_no_setting_is_probed(tmp_path, monkeypatch):
    root = _write(tmp_path / "lib", '[tool.mlx-trainer-harness]\ntarget = "mine.py:Undocumented"\n')
    (root / "mine.py").write_text("from mlxth.harness.adapters.reference import ReferenceTarget\n\n\n"
                                  "class Undocumented(ReferenceTarget):\n    name = 'undocumented'\n"
                                  "    documented_hyperparameters = None\n")
    monkeypatch.chdir(root)
    result = CliRunner().invoke(main, ["conformance", "--trainer", "simpo", "--fixture", "tiny-llama"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(next((root / "reports").glob("*/conformance.json")).read_text())
    assert report["target"] == f"{root / 'mine.py'}:Undocumented"
    (dead,) = [o for o in report["outcomes"] if o["probe"] == "dead-config"]
    assert dead["status"] == "n/a" and dead["statement"].startswith("n/a: the target documents no hyper-parameters"), dead
