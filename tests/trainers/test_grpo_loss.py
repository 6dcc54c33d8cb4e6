"""GRPO's pure functions (``trainers/grpo_loss.py``) against a float64 numpy reference.

Inputs are drawn in float32; MLX gets those fp32 arrays and numpy
(``tests/support/numpy_grpo.py``) the very same values cast to float64, so the
comparisons at rtol = atol = 1e-6 measure only the loss arithmetic.

Shapes: 3 groups x G = 4 completions = 12 rows, time 1..10.  Masks keep at
least one token per row; some cases fully mask one row.  ``old_logps`` and
``ref_logps`` are ``logps`` plus N(0, 0.3) noise, so ratios land on both sides
of the clip range.
"""

import mlx.core as mx
import numpy as np
import pytest

from support import numpy_grpo as ref
from mlxth.trainers import grpo_loss as G

RTOL = ATOL = 1e-6
N_GROUPS, GROUP_SIZE = 3, 4
ROWS = N_GROUPS * GROUP_SIZE

# (seed, time, one fully-masked row?)
CASES = [(0, 1, False), (1, 3, True), (2, 5, False), (3, 7, True), (4, 10, False), (5, 10, True)]
CASE_IDS = [f"seed{s}-T{t}" + ("-maskedrow" if m else "") for s, t, m in CASES]
UNMASKED_CASES = [c for c in CASES if not c[2]]
UNMASKED_IDS = [i for c, i in zip(CASES, CASE_IDS) if not c[2]]
BETAS = (0.0, 0.04)
EPSILONS = [(0.2, 0.2), (0.2, 0.28)]
EPS_IDS = ["eps0.2", "eps0.2-0.28"]
METRIC_KEYS = {"clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def rng_for(*key):
    return np.random.default_rng(list(key))


def random_mask(rng, rows, time, masked_row=None):
    mask = (rng.uniform(size=(rows, time)) < 0.7).astype(np.float32)
    mask[np.arange(rows), rng.integers(0, time, size=rows)] = 1.0  # >= 1 token per row
    if masked_row is not None:
        mask[masked_row] = 0.0
    return mask


def random_rewards(rng, zero_std_group=True):
    rewards = rng.normal(size=ROWS).astype(np.float32)
    if zero_std_group:
        g = rng.integers(0, N_GROUPS)
        rewards[g * GROUP_SIZE : (g + 1) * GROUP_SIZE] = rewards[g * GROUP_SIZE]
    return rewards


def make_case(seed, time, masked_row, mask=None):
    """fp32 numpy inputs for one loss case; advantages are group-normalised."""
    rng = rng_for(seed, time, int(masked_row))
    logps = (-rng.uniform(0.1, 5.0, size=(ROWS, time))).astype(np.float32)
    old = (logps + rng.normal(0.0, 0.3, size=logps.shape)).astype(np.float32)
    ref_logps = (logps + rng.normal(0.0, 0.3, size=logps.shape)).astype(np.float32)
    if mask is None:
        mask = random_mask(rng, ROWS, time, int(rng.integers(0, ROWS)) if masked_row else None)
    adv, _ = ref.group_advantages(random_rewards(rng), GROUP_SIZE, "group")
    return {
        "logps": logps,
        "old_logps": old,
        "ref_logps": ref_logps,
        "mask": mask,
        "advantages": adv.astype(np.float32),
    }


def mx_inputs(case):
    return {k: mx.array(v) for k, v in case.items()}


def to_float(value):
    if isinstance(value, mx.array):
        mx.eval(value)
        assert value.size == 1, value.shape
        return float(value.item())
    return float(value)


def check(got, want, what):
    got = to_float(got)
    assert np.isclose(got, want, rtol=RTOL, atol=ATOL), f"{what}: mlx {got!r} vs numpy {want!r} (diff {got - want:.3g})"


def check_array(got, want, what):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=what)


def loss_kwargs(loss_type, beta, eps, time):
    return {
        "beta": beta,
        "epsilon_low": eps[0],
        "epsilon_high": eps[1],
        "loss_type": loss_type,
        "max_completion_length": time,
    }


def split(case, at):
    first = {k: v[:at] for k, v in case.items()}
    second = {k: v[at:] for k, v in case.items()}
    return first, second


# --------------------------------------------------------------------------
# advantages
# --------------------------------------------------------------------------


def _check_advantages(rewards, scale):
    got_adv, got_zero = G.group_advantages(mx.array(rewards), GROUP_SIZE, scale)
    mx.eval(got_adv, got_zero)
    want_adv, want_zero = ref.group_advantages(rewards, GROUP_SIZE, scale)
    check_array(np.array(got_adv), want_adv, f"advantages[{scale}]")
    assert np.array(got_zero).tolist() == want_zero.tolist()
    return np.array(got_adv), np.array(got_zero)


@pytest.mark.parametrize("scale", ref.SCALE_REWARDS)
@pytest.mark.parametrize("seed", range(4))
def test_advantages_continuous_rewards(seed, scale):
    rewards = random_rewards(rng_for(seed, 100), zero_std_group=seed % 2 == 0)
    adv, zero = _check_advantages(rewards, scale)
    assert zero.sum() == (1 if seed % 2 == 0 else 0)
    for g in np.flatnonzero(zero):  # equal rewards -> A exactly 0 in every mode
        assert np.all(adv[g * GROUP_SIZE : (g + 1) * GROUP_SIZE] == 0.0)


@pytest.mark.parametrize("scale", ref.SCALE_REWARDS)
@pytest.mark.parametrize("seed", range(3))
def test_advantages_binary_rewards(seed, scale):
    rng = rng_for(seed, 200)
    rewards = (rng.uniform(size=ROWS) < 0.5).astype(np.float32)
    rewards[:GROUP_SIZE] = float(seed % 2)  # one all-0 or all-1 group
    rewards[GROUP_SIZE : GROUP_SIZE + 2] = [0.0, 1.0]  # a mixed group
    adv, zero = _check_advantages(rewards, scale)
    assert zero[0] and not zero[1]
    assert np.all(adv[:GROUP_SIZE] == 0.0)


def test_advantages_all_groups_zero_std():
    rewards = np.repeat(np.array([0.0, 1.0, 0.5], dtype=np.float32), GROUP_SIZE)
    for scale in ref.SCALE_REWARDS:
        adv, zero = _check_advantages(rewards, scale)
        assert zero.all() and np.all(adv == 0.0)


@pytest.mark.parametrize("scale", ref.SCALE_REWARDS)
def test_advantages_nearly_equal_group_is_not_zero_std(scale):
    """zero_std means all rewards exactly equal, not a small std (values exact in fp32)."""
    rewards = np.array([0.25, 0.25, 0.25, 0.25 + 2.0**-20] + [1.0, 0.0, 0.5, 0.25] * 2, dtype=np.float32)
    adv, zero = _check_advantages(rewards, scale)
    assert zero.tolist() == [False, False, False]
    assert adv[3] > 0 > adv[0]


def test_invalid_scale_rewards_raises():
    with pytest.raises(ValueError, match="'bogus_scale'"):
        G.group_advantages(mx.zeros((ROWS,)), GROUP_SIZE, "bogus_scale")


# --------------------------------------------------------------------------
# loss and metrics on random inputs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("eps", EPSILONS, ids=EPS_IDS)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("loss_type", ref.LOSS_TYPES)
@pytest.mark.parametrize("seed,time,masked_row", CASES, ids=CASE_IDS)
def test_loss_and_metrics_match_numpy(seed, time, masked_row, loss_type, beta, eps):
    case = make_case(seed, time, masked_row)
    kwargs = loss_kwargs(loss_type, beta, eps, time)
    loss, metrics = G.grpo_loss(**mx_inputs(case), **kwargs)
    want_loss, want_metrics = ref.grpo_loss(**case, **kwargs)
    check(loss, want_loss, f"{loss_type} loss")
    assert set(metrics) == set(want_metrics)
    assert set(metrics) == (METRIC_KEYS | {"kl"} if beta > 0 else METRIC_KEYS)
    for key, want in want_metrics.items():
        check(metrics[key], want, key)


def test_random_inputs_clip_on_both_sides():
    """The inputs exercise both clip branches (else the metric checks are vacuous)."""
    low = high = 0.0
    for seed, time, masked_row in CASES:
        _, metrics = ref.grpo_loss(**make_case(seed, time, masked_row))
        assert 0 < metrics["clip_ratio/region_mean"] < 1
        low += metrics["clip_ratio/low_mean"]
        high += metrics["clip_ratio/high_mean"]
    assert low > 0 and high > 0


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("loss_type", ref.LOSS_TYPES)
@pytest.mark.parametrize("seed,time,masked_row", CASES[1::2], ids=CASE_IDS[1::2])
def test_gradient_matches_numpy(seed, time, masked_row, loss_type, beta):
    """mx.grad w.r.t. logps (old/ref fixed) equals the analytic gradient, clipping included."""
    case = make_case(seed, time, masked_row)
    kwargs = loss_kwargs(loss_type, beta, (0.2, 0.28), time)
    inputs = mx_inputs(case)
    logps = inputs.pop("logps")
    grad = mx.grad(lambda lp: G.grpo_loss(lp, **inputs, **kwargs)[0])(logps)
    mx.eval(grad)
    check_array(np.array(grad), ref.grpo_grad_logps(**case, **kwargs), f"{loss_type} grad")


# --------------------------------------------------------------------------
# gradient accumulation
# --------------------------------------------------------------------------


def _equal_token_mask(seed, time, masked_row):
    """Rows 6..11 are a row permutation of rows 0..5: both halves hold the same tokens."""
    rng = rng_for(seed, time, 300)
    half = random_mask(rng, ROWS // 2, time, int(rng.integers(0, ROWS // 2)) if masked_row else None)
    return np.concatenate([half, half[rng.permutation(ROWS // 2)]])


def _micro_sum(case, kwargs, at):
    full_tokens = mx.array(case["mask"]).sum()  # as the trainer passes it: an mx scalar
    total_mx, total_np = 0.0, 0.0
    for micro in split(case, at):
        micro_kwargs = dict(kwargs, num_sequences=ROWS, num_tokens=full_tokens)
        total_mx = total_mx + to_float(G.grpo_loss(**mx_inputs(micro), **micro_kwargs)[0])
        total_np += ref.grpo_loss(**micro, **dict(micro_kwargs, num_tokens=float(case["mask"].sum())))[0]
    return total_mx, total_np


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("loss_type", ref.LOSS_TYPES)
@pytest.mark.parametrize("seed,time,masked_row", CASES, ids=CASE_IDS)
def test_accumulation_sum_of_micro_losses_equals_full(seed, time, masked_row, loss_type, beta):
    mask = _equal_token_mask(seed, time, masked_row)
    case = make_case(seed, time, masked_row, mask=mask)
    kwargs = loss_kwargs(loss_type, beta, (0.2, 0.28), time)
    full = to_float(G.grpo_loss(**mx_inputs(case), **kwargs)[0])
    check(full, ref.grpo_loss(**case, **kwargs)[0], "full loss")
    micro_mx, micro_np = _micro_sum(case, kwargs, ROWS // 2)
    check(micro_mx, micro_np, "sum of micro losses vs numpy")
    check(micro_mx, full, "sum of micro losses vs full-batch loss")


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("seed,time,masked_row", [c for c in CASES if c[1] >= 3])
def test_accumulation_unequal_tokens_and_rows(seed, time, masked_row, loss_type):
    """grpo, dr_grpo and dapo are exact under any split (here 5 + 7 rows, unequal tokens)."""
    case = make_case(seed, time, masked_row)
    kwargs = loss_kwargs(loss_type, 0.04, (0.2, 0.28), time)
    full = to_float(G.grpo_loss(**mx_inputs(case), **kwargs)[0])
    micro_mx, micro_np = _micro_sum(case, kwargs, 5)
    check(micro_mx, micro_np, "sum of micro losses vs numpy")
    check(micro_mx, full, "sum of micro losses vs full-batch loss")


@pytest.mark.parametrize("seed,time,masked_row", [c for c in CASES if c[1] >= 3])
def test_accumulation_bnpo_unequal_tokens_differs(seed, time, masked_row):
    """bnpo is NOT the full-batch token mean when the micro-batches' token counts differ.

    TRL's bnpo divides each micro-batch's masked sum by that micro-batch's own
    token count and then averages the micro-batch losses (divides by the
    accumulation steps), so the step's loss is a mean of per-micro-batch token
    means, which weights tokens of a short micro-batch more heavily than the
    full batch's single token mean does.  The MLX loss must follow that (match
    numpy micro by micro), and therefore differ from the full-batch value.
    """
    case = make_case(seed, time, masked_row)
    first, second = split(case, ROWS // 2)
    assert first["mask"].sum() != second["mask"].sum()
    kwargs = loss_kwargs("bnpo", 0.04, (0.2, 0.28), time)
    full = ref.grpo_loss(**case, **kwargs)[0]
    micro_mx, micro_np = _micro_sum(case, kwargs, ROWS // 2)
    check(micro_mx, micro_np, "sum of micro losses vs numpy")
    assert abs(micro_np - full) > 1e-4


# --------------------------------------------------------------------------
# the key property: ratio 1, beta 0 -> loss value ~0 but gradient nonzero
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed,time,masked_row", UNMASKED_CASES, ids=UNMASKED_IDS)
def test_grpo_ratio_one_value_zero_gradient_nonzero(seed, time, masked_row):
    case = make_case(seed, time, masked_row)
    inputs = mx_inputs(case)
    adv, mask = inputs["advantages"], inputs["mask"]

    def loss_fn(lp):
        return G.grpo_loss(lp, mx.stop_gradient(lp), adv, mask, beta=0.0, loss_type="grpo")[0]

    value, grad = mx.value_and_grad(loss_fn)(inputs["logps"])
    mx.eval(value, grad)
    # Group-normalised advantages sum to 0 within each group, and every row has
    # tokens, so sum_i mean_t(-A_i * 1) = -sum_i A_i = 0.
    assert abs(value.item()) < 1e-6
    grad = np.array(grad)
    n_tokens = case["mask"].astype(np.float64).sum(axis=1, keepdims=True)
    want = -case["advantages"].astype(np.float64)[:, None] * case["mask"] / (n_tokens * ROWS)
    check_array(grad, want, "grpo grad at ratio 1")
    check_array(grad, ref.grpo_grad_logps(case["logps"], case["logps"], case["advantages"], case["mask"]), "general")
    assert np.abs(grad).max() > 1e-3


@pytest.mark.parametrize("loss_type", ref.LOSS_TYPES)
@pytest.mark.parametrize("seed,time,masked_row", CASES[:4], ids=CASE_IDS[:4])
def test_ratio_one_value_and_gradient_all_loss_types(seed, time, masked_row, loss_type):
    case = make_case(seed, time, masked_row)
    inputs = mx_inputs(case)
    kwargs = loss_kwargs(loss_type, 0.0, (0.2, 0.28), time)

    def loss_fn(lp):
        return G.grpo_loss(lp, mx.stop_gradient(lp), inputs["advantages"], inputs["mask"], **kwargs)[0]

    value, grad = mx.value_and_grad(loss_fn)(inputs["logps"])
    mx.eval(value, grad)
    np_args = (case["logps"], case["logps"], case["advantages"], case["mask"])
    check(value, ref.grpo_loss(*np_args, **kwargs)[0], f"{loss_type} value at ratio 1")
    check_array(np.array(grad), ref.grpo_grad_logps(*np_args, **kwargs), f"{loss_type} grad at ratio 1")
    assert np.abs(np.array(grad)).max() > 1e-3


# --------------------------------------------------------------------------
# argument validation
# --------------------------------------------------------------------------


def test_invalid_loss_type_raises():
    case = mx_inputs(make_case(0, 3, False))
    with pytest.raises(ValueError, match="'bogus_loss'"):
        G.grpo_loss(**case, loss_type="bogus_loss")
