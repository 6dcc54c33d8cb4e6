"""Equivalence classes: batch 4 == batch 2 x accumulation 2 == 2 ranks x batch 2, per trainer,
and the planted accumulation / data-parallel faults each caught with its own kind."""


import pytest

from mlxth.fixtures import load_fixture
from mlxth.harness.model import TRAINERS
from mlxth.harness.judge.equivalence import CLASSES, run_class, split_class
from mlxth.harness.judge.golden import (Tolerance, compared_keys, data_parallel_check, equivalence_tolerance,
                                        first_divergence)
from mlxth.harness.target import load_target
from mlxth.trainers import SPECS, make_trainer
from mlxth.trainers.core import DataParallel, step_batches

from support.helpers import rows_for
from support import PLANTED_DISTRIBUTED

PLANTED = str(PLANTED_DISTRIBUTED)
SPLIT = CLASSES["split-4-2"]
ACCUMULATION, RANKS = SPLIT.members[1].label, SPLIT.members[2].label


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_member_of_the_split_class_matches_the_golden(trainer, tmp_path):
    result = run_class(SPLIT, trainer, "tiny-llama", tmp_path, load_target("reference"), timeout=240)
    assert result["status"] == "pass", result["failure"]
    assert [m["member"] for m in result["members"]] == ["batch 4", ACCUMULATION, RANKS]
    assert all(len(m["steps"]) == 3 for m in result["members"])
    ranks = result["members"][2]["ranks"]
    assert [r["status"] for r in ranks] == ["ok", "ok"] and [r["steps_done"] for r in ranks] == [3, 3]
    assert [c["name"] for c in result["checks"]] == ["equivalence", "equivalence"]
    tol = equivalence_tolerance(trainer)
    for label, diff in result["differences"].items():
        assert diff["weights"]["max_abs"] <= tol.weights * diff["weights"]["largest_update"], label
        assert diff["trace"]["num_tokens"] == (0, 0), label  # the same rows, every member
        assert diff["trace"]["loss"][0] <= tol.atol + tol.rtol * 10, label


def _fault(tmp_path, name, trainer="dpo", only=(RANKS,), timeout=240):
    return run_class(SPLIT, trainer, "tiny-llama", tmp_path, load_target(f"{PLANTED}:{name}"), only=only,
                     timeout=timeout)


def test_gradients_summed_instead_of_averaged_drift_in_the_grad_norm(tmp_path):
    result = _fault(tmp_path, "SummedGradients")
    assert result["failure"]["kind"] == "equivalence-drift"
    message = result["failure"]["message"]
    assert message.startswith(f"step 1: grad_norm: {RANKS!r}") and "vs golden 'batch 4'" in message
    assert "rtol" in message and "atol" in message
    steps = {m["member"]: m["steps"] for m in result["members"]}
    assert steps[RANKS][0]["grad_norm"] == pytest.approx(2 * steps["batch 4"][0]["grad_norm"], rel=1e-5)


def test_a_rank_that_skips_its_shard_drifts_in_the_loss(tmp_path):
    result = _fault(tmp_path, "SkippedShard")
    assert result["failure"]["kind"] == "equivalence-drift"
    assert result["failure"]["message"].startswith(f"step 1: loss: {RANKS!r}")
    steps = {m["member"]: m["steps"] for m in result["members"]}
    assert steps[RANKS][0]["loss"] == pytest.approx(steps["batch 4"][0]["loss"] / 2, rel=1e-5)


def test_accumulation_that_divides_the_loss_twice_is_named_by_its_member(tmp_path):
    result = _fault(tmp_path, "DoubleDividedAccumulation", only=(ACCUMULATION,))
    assert result["failure"]["kind"] == "equivalence-drift"
    assert result["failure"]["message"].startswith(f"step 1: loss: {ACCUMULATION!r}")


def test_a_rank_that_dies_mid_run_is_a_rank_crash_naming_rank_and_step(tmp_path):
    result = _fault(tmp_path, "RankDies")
    assert result["failure"]["kind"] == "rank-crash"
    assert "rank 1 died in step 2 (exited with status 1)" in result["failure"]["message"]
    assert RANKS in result["failure"]["message"]


def test_ranks_that_step_on_their_own_gradients_diverge(tmp_path):
    result = _fault(tmp_path, "UnusedAverage")
    assert result["failure"]["kind"] == "rank-divergence"
    assert "rank 1's final weights differ from rank 0's" in result["failure"]["message"]


def test_a_hung_rank_times_out_without_hanging_the_run(tmp_path):
    result = _fault(tmp_path, "RankHangs", timeout=15)
    assert result["failure"]["kind"] == "timeout"
    assert "no result after 15 s (killed)" in result["failure"]["message"]
    ranks_member = result["members"][1]
    assert ranks_member["duration_s"] < 40


# ---------------------------------------------------------------------------
# The pieces, in process.
# ---------------------------------------------------------------------------


class _FakeGroup:
    def __init__(self, rank, size):
        self._rank, self._size = rank, size

    def rank(self):
        return self._rank

    def size(self):
        return self._size


def test_one_process_data_parallel_is_the_identity():
    dp = DataParallel()
    items = [[1, 2], [3, 4]]
    assert not dp.active and dp.shard(items) is items and dp.count(7) == 7


def test_ranks_take_contiguous_equal_shards_of_the_step():
    items = [["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"]]
    assert DataParallel(_FakeGroup(0, 2)).shard(items) == items[:2]
    assert DataParallel(_FakeGroup(1, 2)).shard(items) == items[2:]
    with pytest.raises(ValueError, match="cannot be split evenly over 3 ranks"):
        DataParallel(_FakeGroup(0, 3)).shard(items)


def test_every_member_consumes_the_same_rows_in_the_same_order():
    _, tok = load_fixture("tiny-llama")
    rows = rows_for("dpo", tok)
    config = SPECS["dpo"].config_class

    def flat(cfg, world):
        return [[r["prompt"] for micro in step for r in micro] for step in step_batches(rows, cfg, 5, world)]

    batch4 = flat(config(batch_size=4), 1)
    assert flat(config(batch_size=2, grad_accumulation_steps=2), 1) == batch4
    assert flat(config(batch_size=2), 2) == batch4


def test_grpo_data_parallel_rollouts_need_per_prompt_keys():
    from mlxth.fixtures.rewards import DEFAULT_REWARDS

    model, tok = load_fixture("tiny-llama")
    spec = SPECS["grpo"]
    with pytest.raises(ValueError, match="rollout_rng='per-prompt'"):
        make_trainer(spec, model, spec.config_class(), tok, reward_funcs=DEFAULT_REWARDS, group=_FakeGroup(0, 2))
    with pytest.raises(ValueError, match="unknown rollout_rng"):
        make_trainer(spec, model, spec.config_class(rollout_rng="shared"), tok, reward_funcs=DEFAULT_REWARDS)


def test_split_class_members_and_labels():
    cls = split_class(8, 4)
    assert cls.describe() == "batch 8 == batch 2 x accumulation 4 == 4 ranks x batch 2"
    assert [(m.batch_size, m.grad_accumulation_steps, m.ranks) for m in cls.members] == [(8, 1, 1), (2, 4, 1),
                                                                                        (2, 1, 4)]
    with pytest.raises(ValueError):
        split_class(4, 3)


def test_every_metric_but_the_schedule_is_held_to_the_class():
    """KTO's per-kind means and ORPO's NLL metric are exact step-level shares, so they are compared too."""
    steps = [{"step": 1, "loss": 0.5, "grad_norm": 1.0, "learning_rate": 1e-4, "kl": 0.0, "rewards/chosen": 0.1}]
    assert compared_keys(steps) == ["loss", "grad_norm", "kl", "rewards/chosen"]


def test_first_divergence_applies_atol_and_rtol_to_the_compared_keys():
    tol = Tolerance(rtol=1e-5, atol=1e-6, weights=1e-2)
    golden = [{"step": 1, "loss": 1.0, "grad_norm": 2.0}]
    keys = compared_keys(golden)

    def drift(steps):
        return first_divergence(golden, steps, tol.rtol, tol.atol, keys)

    assert drift([{"step": 1, "loss": 1.0 + 5e-6, "grad_norm": 2.0}]) is None
    assert drift([{"step": 1, "loss": 1.0, "grad_norm": 2.1}]) == (1, "grad_norm", 2.0, 2.1)
    assert drift([{"step": 1, "loss": 1.0}]) == (1, "grad_norm", 2.0, None)
    assert drift([]) == (1, "steps", 1, 0)


def _result(trainer, settings, steps):
    return {"case": {"trainer": trainer, "settings": settings}, "steps": steps}


def test_golden_check_of_a_data_parallel_run():
    base = {"steps": 3, "batch_size": 4, "grad_accumulation_steps": 1, "ranks": 1, "learning_rate": 1e-4,
            "extra": {}}
    golden = {"settings": {k: v for k, v in base.items() if k != "ranks"},  # goldens predate the field
              "steps": [{"step": 1, "loss": 0.69, "grad_norm": 2.0}]}
    dp = {**base, "batch_size": 2, "ranks": 2}
    ok = data_parallel_check(golden, _result("dpo", dp, [{"step": 1, "loss": 0.69 + 1e-9, "grad_norm": 2.0}]))
    assert ok["status"] == "pass" and "2 ranks x batch 2" in ok["detail"]
    bad = data_parallel_check(golden, _result("dpo", dp, [{"step": 1, "loss": 0.69, "grad_norm": 4.0}]))
    assert bad["kind"] == "equivalence-drift" and bad["detail"].startswith("step 1: grad_norm")
    grpo = data_parallel_check(golden, _result("grpo", {**dp, "extra": {"rollout_rng": "per-prompt"}}, []))
    assert grpo["status"] == "skip" and "extra.rollout_rng" in grpo["detail"]
    other_batch = data_parallel_check(golden, _result("dpo", {**dp, "batch_size": 1}, []))
    assert other_batch["status"] == "skip" and "a step of 2 rows, not 4" in other_batch["detail"]
