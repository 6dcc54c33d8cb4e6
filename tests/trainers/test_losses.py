"""The MLX preference losses (``trainers/losses.py``) against float64 numpy references.

Inputs are built in float32 first; MLX gets those fp32 arrays, numpy gets the
very same values cast to float64 (``harness/formulas.py``), so differences
measure only the loss arithmetic.

Over 400 lines on purpose: one parametrized block per loss and its edge
cases, kept together so a reader sees every case a loss is held to.
"""

import math

import mlx.core as mx
import numpy as np
import pytest

from mlxth.trainers import losses


from mlxth.harness.judge import formulas as ref

RTOL = ATOL = 1e-6
SEEDS = (0, 1, 2)
BATCH_SIZES = tuple(range(1, 9))
RANDOM_CASES = [(seed, n) for seed in SEEDS for n in BATCH_SIZES]
RANDOM_IDS = [f"seed{seed}-n{n}" for seed, n in RANDOM_CASES]

DPO_KEYS = {
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
}
ORPO_KEYS = DPO_KEYS | {"nll_loss", "log_odds_ratio", "log_odds_chosen"}
KTO_KEYS = {"kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def rng_for(seed, n, salt=0):
    return np.random.default_rng([seed, n, salt])


def sum_logps(rng, n):
    """Sequence log-probs (sums over tokens) as fp32: -U(1, 60)."""
    return (-rng.uniform(1.0, 60.0, size=n)).astype(np.float32)


def token_lengths(rng, n):
    return rng.integers(1, 31, size=n).astype(np.int32)


def mxa(x):
    """An MLX array holding exactly the given numpy values (fp32 stays fp32)."""
    return mx.array(np.asarray(x))


def to_float(value):
    if isinstance(value, mx.array):
        mx.eval(value)
        assert value.size == 1, value.shape
        return float(value.item())
    return float(value)


def check(got, want, what, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(to_float(got), want, rtol=rtol, atol=atol, err_msg=what)


def check_result(result, expected, keys):
    """Compare ``(loss, metrics)`` from MLX with the float64 reference."""
    loss, metrics = result
    want_loss, want_metrics = expected
    assert isinstance(loss, mx.array) and loss.dtype == mx.float32, loss
    assert loss.shape == (), loss.shape
    assert set(metrics) == keys
    assert set(want_metrics) == keys
    check(loss, want_loss, "loss")
    for name in sorted(keys):
        check(metrics[name], want_metrics[name], name)


def dpo_inputs(seed, n, averaged=False):
    rng = rng_for(seed, n, 1)
    arrays = [sum_logps(rng, n) for _ in range(4)]
    if averaged:  # IPO: length-averaged log-probs
        arrays = [(a / token_lengths(rng, n)).astype(np.float32) for a in arrays]
    return arrays


# --------------------------------------------------------------------------
# log1mexp
# --------------------------------------------------------------------------

NEAR_ZERO = [-1e-7, -1e-4, -0.5, -0.7, -0.6931, -30.0]
EXTRA_POINTS = [-1e-30, -1e-20, -1e-3, -0.1, -0.69314718, -0.69315, -1.0, -5.0, -20.0, -60.0, -87.0]


@pytest.mark.parametrize("x", NEAR_ZERO + EXTRA_POINTS)
def test_log1mexp_matches_high_precision(x):
    x32 = np.float32(x)
    got = losses.log1mexp(mxa(np.array([x32])))
    assert got.dtype == mx.float32
    got = float(np.array(got)[0])
    want = ref.log1mexp(np.float64(x32))
    assert math.isfinite(got)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=0, err_msg=f"log1mexp({x!r})")


def test_log1mexp_vectorised_and_at_zero():
    xs = np.array(NEAR_ZERO + EXTRA_POINTS, dtype=np.float32)
    got = np.array(losses.log1mexp(mxa(xs)))
    np.testing.assert_allclose(got, ref.log1mexp(xs.astype(np.float64)), rtol=1e-5, atol=0)
    # log(1 - exp(0)) = log 0 = -inf, not nan.
    at_zero = float(np.array(losses.log1mexp(mxa(np.array([0.0], dtype=np.float32))))[0])
    assert at_zero == -math.inf


def test_log1mexp_gradient_finite_and_correct():
    """The unused ``where`` branch must not poison the gradient with nan/inf."""
    xs = np.array(NEAR_ZERO + EXTRA_POINTS, dtype=np.float32)
    grad = np.array(mx.grad(lambda x: losses.log1mexp(x).sum())(mxa(xs)))
    assert np.all(np.isfinite(grad)), grad
    np.testing.assert_allclose(grad, ref.dlog1mexp(xs.astype(np.float64)), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# DPO
# --------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("seed,n", RANDOM_CASES, ids=RANDOM_IDS)
def test_dpo_random_matches_numpy(seed, n, loss_type, label_smoothing, beta):
    pc, pr, rc, rr = dpo_inputs(seed, n, averaged=loss_type == "ipo")
    got = losses.dpo_loss(
        mxa(pc), mxa(pr), mxa(rc), mxa(rr), beta=beta, loss_type=loss_type, label_smoothing=label_smoothing
    )
    want = ref.dpo(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    check_result(got, want, DPO_KEYS)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("n", [2, 5, 8])
def test_dpo_num_examples_half_batches_add_up(loss_type, n):
    pc, pr, rc, rr = dpo_inputs(7, n, averaged=loss_type == "ipo")
    kw = dict(beta=0.5, loss_type=loss_type, label_smoothing=0.1)
    full, _ = losses.dpo_loss(mxa(pc), mxa(pr), mxa(rc), mxa(rr), **kw)
    k = n // 2
    parts = [
        losses.dpo_loss(mxa(pc[s]), mxa(pr[s]), mxa(rc[s]), mxa(rr[s]), num_examples=n, **kw)[0]
        for s in (slice(0, k), slice(k, n))
    ]
    check(parts[0] + parts[1], to_float(full), "sum of half-batch losses")
    # And against numpy, half by half.
    for s, part in zip((slice(0, k), slice(k, n)), parts):
        check(part, ref.dpo(pc[s], pr[s], rc[s], rr[s], num_examples=n, **kw)[0], "half-batch loss")


@pytest.mark.parametrize("n", [1, 4])
def test_dpo_policy_equals_reference_gives_ln2(n):
    rng = rng_for(11, n)
    chosen, rejected = sum_logps(rng, n), sum_logps(rng, n)
    for beta in (0.1, 0.5):
        loss, metrics = losses.dpo_loss(mxa(chosen), mxa(rejected), mxa(chosen), mxa(rejected), beta=beta)
        np.testing.assert_allclose(to_float(loss), math.log(2.0), rtol=0, atol=1e-7)
        for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert to_float(metrics[name]) == 0.0, name
        check(metrics["logps/chosen"], float(np.mean(chosen.astype(np.float64))), "logps/chosen")
    # With label smoothing the value at h = 0 is still ln 2.
    loss, _ = losses.dpo_loss(mxa(chosen), mxa(rejected), mxa(chosen), mxa(rejected), label_smoothing=0.1)
    np.testing.assert_allclose(to_float(loss), math.log(2.0), rtol=0, atol=1e-7)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_dpo_large_margins_are_finite_with_right_asymptotics(sign, label_smoothing):
    h = sign * 1e4
    # pc - rc = h, pr == rr: exact in fp32.
    pc = np.array([-10.0], dtype=np.float32)
    rc = (pc - np.float32(h)).astype(np.float32)
    pr = rr = np.array([-20.0], dtype=np.float32)
    beta = 1.0
    loss, metrics = losses.dpo_loss(mxa(pc), mxa(pr), mxa(rc), mxa(rr), beta=beta, label_smoothing=label_smoothing)
    value = to_float(loss)
    assert math.isfinite(value)
    eps = label_smoothing
    # -(1-e) logsig(bh) - e logsig(-bh) -> (1-e)*b*|h| if h < 0, e*b*|h| if h > 0 (plus < 1e-4000).
    want = (eps if h > 0 else 1 - eps) * beta * abs(h)
    np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-6)
    check(loss, ref.dpo(pc, pr, rc, rr, beta=beta, label_smoothing=label_smoothing)[0], "vs numpy")
    assert all(math.isfinite(to_float(v)) for v in metrics.values())
    check(metrics["rewards/margins"], beta * h, "margin")
    # Hinge and IPO stay finite too.
    hinge, _ = losses.dpo_loss(mxa(pc), mxa(pr), mxa(rc), mxa(rr), beta=beta, loss_type="hinge")
    check(hinge, max(0.0, 1 - beta * h), "hinge")
    ipo, _ = losses.dpo_loss(mxa(pc), mxa(pr), mxa(rc), mxa(rr), beta=beta, loss_type="ipo")
    check(ipo, (h - 0.5 / beta) ** 2, "ipo")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_dpo_sigmoid_gradient_wrt_policy_chosen(n, beta, label_smoothing):
    pc, pr, rc, rr = dpo_inputs(3, n)

    def f(x):
        return losses.dpo_loss(x, mxa(pr), mxa(rc), mxa(rr), beta=beta, label_smoothing=label_smoothing)[0]

    grad = np.array(mx.grad(f)(mxa(pc)), dtype=np.float64)
    want = ref.dpo_grad_policy_chosen(pc, pr, rc, rr, beta=beta, label_smoothing=label_smoothing)
    np.testing.assert_allclose(grad, want, rtol=RTOL, atol=ATOL)
    if label_smoothing == 0.0:
        h = ref.dpo_margin(pc, pr, rc, rr)
        np.testing.assert_allclose(grad, -beta * ref.sigmoid(-beta * h) / n, rtol=RTOL, atol=ATOL)
    assert np.all(grad != 0)


def test_dpo_gradient_through_reference_is_opposite_of_policy():
    pc, pr, rc, rr = dpo_inputs(4, 5)
    g_policy = mx.grad(lambda x: losses.dpo_loss(x, mxa(pr), mxa(rc), mxa(rr))[0])(mxa(pc))
    g_ref = mx.grad(lambda x: losses.dpo_loss(mxa(pc), mxa(pr), x, mxa(rr))[0])(mxa(rc))
    np.testing.assert_allclose(np.array(g_ref), -np.array(g_policy), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("bad", ["bogus", "SIGMOID", "kto_pair"])
def test_dpo_invalid_loss_type_raises(bad):
    x = mxa(np.array([-1.0], dtype=np.float32))
    with pytest.raises(ValueError, match=repr(bad)):
        losses.dpo_loss(x, x, x, x, loss_type=bad)


# --------------------------------------------------------------------------
# ORPO
# --------------------------------------------------------------------------


def orpo_inputs(seed, n):
    rng = rng_for(seed, n, 2)
    return sum_logps(rng, n), sum_logps(rng, n), token_lengths(rng, n), token_lengths(rng, n)


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("seed,n", RANDOM_CASES, ids=RANDOM_IDS)
def test_orpo_random_matches_numpy(seed, n, beta):
    c, r, lc, lr = orpo_inputs(seed, n)
    got = losses.orpo_loss(mxa(c), mxa(r), mxa(lc), mxa(lr), beta=beta)
    want = ref.orpo(c, r, lc, lr, beta=beta)
    check_result(got, want, ORPO_KEYS)


def test_orpo_float_lengths_same_as_int_lengths():
    c, r, lc, lr = orpo_inputs(5, 6)
    a = losses.orpo_loss(mxa(c), mxa(r), mxa(lc), mxa(lr))
    b = losses.orpo_loss(mxa(c), mxa(r), mxa(lc.astype(np.float32)), mxa(lr.astype(np.float32)))
    check(a[0], to_float(b[0]), "loss")
    for name in ORPO_KEYS:
        check(a[1][name], to_float(b[1][name]), name)


@pytest.mark.parametrize("avg_rejected", [-1e-7, -1e-4, -0.5, -0.7, -0.6931, -30.0])
def test_orpo_near_zero_average_logps(avg_rejected):
    """Average log-probs near 0 (p -> 1) and around -ln 2 stay finite and accurate."""
    c = np.array(NEAR_ZERO, dtype=np.float32)
    r = np.full_like(c, np.float32(avg_rejected))
    ones = np.ones(c.shape, dtype=np.int32)
    loss, metrics = losses.orpo_loss(mxa(c), mxa(r), mxa(ones), mxa(ones), beta=0.1)
    assert math.isfinite(to_float(loss))
    assert all(math.isfinite(to_float(v)) for v in metrics.values())
    check_result((loss, metrics), ref.orpo(c, r, ones, ones, beta=0.1), ORPO_KEYS)


@pytest.mark.parametrize("n", [2, 4, 7])
def test_orpo_num_chosen_tokens_and_num_examples(n):
    c, r, lc, lr = orpo_inputs(9, n)
    total_tokens = int(lc.sum())
    k = n // 2
    halves = (slice(0, k), slice(k, n))
    full, _ = losses.orpo_loss(mxa(c), mxa(r), mxa(lc), mxa(lr), beta=0.2)
    parts = []
    for s in halves:
        loss, metrics = losses.orpo_loss(
            mxa(c[s]), mxa(r[s]), mxa(lc[s]), mxa(lr[s]), beta=0.2, num_examples=n, num_chosen_tokens=total_tokens
        )
        want_loss, want_metrics = ref.orpo(
            c[s], r[s], lc[s], lr[s], beta=0.2, num_examples=n, num_chosen_tokens=total_tokens
        )
        check(loss, want_loss, "micro-batch loss")
        # The metric is this micro-batch's own token-mean NLL.
        check(metrics["nll_loss"], want_metrics["nll_loss"], "nll_loss")
        parts.append(to_float(loss))
    check(sum(parts), to_float(full), "sum of micro-batch losses")
    # num_chosen_tokens as an MLX scalar (what orpo.py passes) gives the same.
    as_array, _ = losses.orpo_loss(
        mxa(c), mxa(r), mxa(lc), mxa(lr), beta=0.2, num_chosen_tokens=mx.array(lc).sum()
    )
    check(as_array, to_float(full), "num_chosen_tokens as array")
    # A different token count changes only the NLL term.
    doubled, _ = losses.orpo_loss(mxa(c), mxa(r), mxa(lc), mxa(lr), beta=0.2, num_chosen_tokens=2 * total_tokens)
    check(doubled, ref.orpo(c, r, lc, lr, beta=0.2, num_chosen_tokens=2 * total_tokens)[0], "doubled tokens")


def test_orpo_gradient_finite_near_zero():
    c = mxa(np.array(NEAR_ZERO, dtype=np.float32))
    r = mxa(np.array([-30.0, -0.7, -1e-4, -0.5, -1e-7, -0.6931], dtype=np.float32))
    ones = mxa(np.ones(len(NEAR_ZERO), dtype=np.int32))
    gc, gr = mx.grad(lambda a, b: losses.orpo_loss(a, b, ones, ones)[0], argnums=(0, 1))(c, r)
    assert np.all(np.isfinite(np.array(gc))) and np.all(np.isfinite(np.array(gr)))


# --------------------------------------------------------------------------
# SimPO
# --------------------------------------------------------------------------


@pytest.mark.parametrize("beta,gamma", [(2.0, 1.0), (2.0, 0.0), (2.5, 0.5), (10.0, 0.3)])
@pytest.mark.parametrize("seed,n", RANDOM_CASES, ids=RANDOM_IDS)
def test_simpo_random_matches_numpy(seed, n, beta, gamma):
    rng = rng_for(seed, n, 3)
    c, r, lc, lr = sum_logps(rng, n), sum_logps(rng, n), token_lengths(rng, n), token_lengths(rng, n)
    got = losses.simpo_loss(mxa(c), mxa(r), mxa(lc), mxa(lr), beta=beta, gamma=gamma)
    check_result(got, ref.simpo(c, r, lc, lr, beta=beta, gamma=gamma), DPO_KEYS)


def test_simpo_gamma_zero_equal_averages_is_ln2():
    c = np.array([-6.0, -12.0, -3.0], dtype=np.float32)
    lc = np.array([2, 4, 1], dtype=np.int32)
    r = np.array([-9.0, -3.0, -15.0], dtype=np.float32)
    lr = np.array([3, 1, 5], dtype=np.int32)  # all averages are -3
    loss, metrics = losses.simpo_loss(mxa(c), mxa(r), mxa(lc), mxa(lr), beta=2.0, gamma=0.0)
    np.testing.assert_allclose(to_float(loss), math.log(2.0), rtol=0, atol=1e-7)
    assert to_float(metrics["rewards/margins"]) == 0.0
    # The default gamma (1.0) shifts it to -logsig(-1) = log(1 + e).
    loss, _ = losses.simpo_loss(mxa(c), mxa(r), mxa(lc), mxa(lr))
    np.testing.assert_allclose(to_float(loss), math.log1p(math.e), rtol=1e-6, atol=0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_simpo_large_margins(sign):
    c = np.array([-1.0 if sign > 0 else -1e4 - 1], dtype=np.float32)
    r = np.array([-1e4 - 1 if sign > 0 else -1.0], dtype=np.float32)
    one = np.array([1], dtype=np.int32)
    loss, _ = losses.simpo_loss(mxa(c), mxa(r), mxa(one), mxa(one), beta=1.0, gamma=0.0)
    value = to_float(loss)
    assert math.isfinite(value)
    np.testing.assert_allclose(value, 0.0 if sign > 0 else 1e4, rtol=1e-6, atol=1e-6)


def test_simpo_num_examples():
    rng = rng_for(4, 6, 3)
    c, r, lc, lr = sum_logps(rng, 6), sum_logps(rng, 6), token_lengths(rng, 6), token_lengths(rng, 6)
    full, _ = losses.simpo_loss(mxa(c), mxa(r), mxa(lc), mxa(lr))
    parts = [losses.simpo_loss(mxa(c[s]), mxa(r[s]), mxa(lc[s]), mxa(lr[s]), num_examples=6)[0]
             for s in (slice(0, 2), slice(2, 6))]
    check(parts[0] + parts[1], to_float(full), "sum of parts")


# --------------------------------------------------------------------------
# KTO
# --------------------------------------------------------------------------


def kto_inputs(seed, n, labels=None):
    rng = rng_for(seed, n, 4)
    policy, reference = sum_logps(rng, n), sum_logps(rng, n)
    if labels is None:
        labels = rng.random(n) < 0.5
    # Mismatched pairs: the policy's log-prob of shifted completions, close to the reference's.
    ref_mis = sum_logps(rng, n)
    pol_mis = (ref_mis + rng.normal(0.0, 2.0, size=n)).astype(np.float32)
    return policy, reference, np.asarray(labels, dtype=bool), pol_mis, ref_mis


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 0.75)], ids=["w1", "w133-075"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("seed,n", RANDOM_CASES, ids=RANDOM_IDS)
def test_kto_random_matches_numpy(seed, n, beta, weights):
    policy, reference, labels, pol_mis, ref_mis = kto_inputs(seed, n)
    z = losses.kto_reference_point(mxa(pol_mis), mxa(ref_mis))
    want_z = ref.kto_z(pol_mis, ref_mis)
    check(z, want_z, "z")
    wd, wu = weights
    got = losses.kto_loss(mxa(policy), mxa(reference), mxa(labels), z, beta=beta,
                          desirable_weight=wd, undesirable_weight=wu)
    # Feed numpy the fp32 z that MLX used, so both see the same reference point.
    want = ref.kto(policy, reference, labels, to_float(z), beta=beta, desirable_weight=wd, undesirable_weight=wu)
    check_result(got, want, KTO_KEYS)


@pytest.mark.parametrize("desirable", [True, False], ids=["all-desirable", "all-undesirable"])
@pytest.mark.parametrize("n", [1, 4])
def test_kto_single_kind_batches(desirable, n):
    policy, reference, labels, pol_mis, ref_mis = kto_inputs(21, n, labels=[desirable] * n)
    z = losses.kto_reference_point(mxa(pol_mis), mxa(ref_mis))
    loss, metrics = losses.kto_loss(mxa(policy), mxa(reference), mxa(labels), z, beta=0.3,
                                    desirable_weight=1.5, undesirable_weight=0.5)
    want = ref.kto(policy, reference, labels, to_float(z), beta=0.3, desirable_weight=1.5, undesirable_weight=0.5)
    check_result((loss, metrics), want, KTO_KEYS)
    empty = "rewards/rejected" if desirable else "rewards/chosen"
    assert to_float(metrics[empty]) == 0.0
    assert to_float(metrics["logps/rejected" if desirable else "logps/chosen"]) == 0.0
    # Loss bounded by the weight of the present kind.
    assert 0.0 < to_float(loss) < (1.5 if desirable else 0.5)


def test_kto_reference_point_clamped_at_zero():
    ref_mis = np.array([-10.0, -20.0, -30.0], dtype=np.float32)
    pol_mis = (ref_mis - np.float32(3.0)).astype(np.float32)  # KL estimate -3
    z = losses.kto_reference_point(mxa(pol_mis), mxa(ref_mis))
    assert to_float(z) == 0.0
    assert ref.kto_z(pol_mis, ref_mis) == 0.0
    # Positive estimate passes through unchanged.
    z = losses.kto_reference_point(mxa(ref_mis + np.float32(2.5)), mxa(ref_mis))
    check(z, 2.5, "positive z")
    # With z = 0 the loss is the plain sigmoid of the reward.
    policy = np.array([-5.0, -7.0, -9.0], dtype=np.float32)
    reference = np.array([-6.0, -6.0, -6.0], dtype=np.float32)
    labels = np.array([True, False, True])
    zero = losses.kto_reference_point(mxa(pol_mis), mxa(ref_mis))
    loss, metrics = losses.kto_loss(mxa(policy), mxa(reference), mxa(labels), zero, beta=0.1)
    assert to_float(metrics["kl"]) == 0.0
    check_result((loss, metrics), ref.kto(policy, reference, labels, 0.0, beta=0.1), KTO_KEYS)


def test_kto_weights_scale_each_kind():
    policy, reference, labels, pol_mis, ref_mis = kto_inputs(5, 6, labels=[True, True, False, True, False, False])
    z = losses.kto_reference_point(mxa(pol_mis), mxa(ref_mis))
    args = (mxa(policy), mxa(reference), mxa(labels), z)
    base = to_float(losses.kto_loss(*args)[0])
    only_d = to_float(losses.kto_loss(*args, undesirable_weight=0.0)[0])
    only_u = to_float(losses.kto_loss(*args, desirable_weight=0.0)[0])
    check(only_d + only_u, base, "d + u parts")
    check(losses.kto_loss(*args, desirable_weight=2.0)[0], 2 * only_d + only_u, "w_d = 2")
    check(losses.kto_loss(*args, undesirable_weight=3.0)[0], only_d + 3 * only_u, "w_u = 3")
    zf = to_float(z)
    check(only_d, ref.kto(policy, reference, labels, zf, undesirable_weight=0.0)[0], "only desirable vs numpy")


def test_kto_num_examples():
    policy, reference, labels, pol_mis, ref_mis = kto_inputs(6, 8)
    z = losses.kto_reference_point(mxa(pol_mis), mxa(ref_mis))
    full, _ = losses.kto_loss(mxa(policy), mxa(reference), mxa(labels), z, beta=0.2)
    parts = [
        losses.kto_loss(mxa(policy[s]), mxa(reference[s]), mxa(labels[s]), z, beta=0.2, num_examples=8)[0]
        for s in (slice(0, 3), slice(3, 8))
    ]
    check(parts[0] + parts[1], to_float(full), "sum of parts")


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_kto_gradients(beta):
    n = 6
    labels = [True, False, True, False, False, True]
    policy, reference, labels, pol_mis, ref_mis = kto_inputs(8, n, labels=labels)
    pol_mis = (ref_mis + np.float32(1.5)).astype(np.float32)  # KL estimate 1.5 > 0: the clamp is inactive
    z = losses.kto_reference_point(mxa(pol_mis), mxa(ref_mis))
    assert to_float(z) > 0

    def f_policy(p):
        return losses.kto_loss(p, mxa(reference), mxa(labels), z, beta=beta, desirable_weight=1.2)[0]

    g = np.array(mx.grad(f_policy)(mxa(policy)), dtype=np.float64)
    assert np.all(g != 0), g
    want = ref.kto_grad_policy(policy, reference, labels, to_float(z), beta=beta, desirable_weight=1.2)
    np.testing.assert_allclose(g, want, rtol=RTOL, atol=ATOL)
    # Desirable examples are pushed up (negative gradient), undesirable down.
    assert np.all(g[labels] < 0) and np.all(g[~labels] > 0)

    def f_mismatched(pm):
        kl = losses.kto_reference_point(pm, mxa(ref_mis))
        return losses.kto_loss(mxa(policy), mxa(reference), mxa(labels), kl, beta=beta)[0]

    value, g_kl = mx.value_and_grad(f_mismatched)(mxa(pol_mis))
    assert math.isfinite(to_float(value))
    np.testing.assert_array_equal(np.array(g_kl), np.zeros(n, dtype=np.float32))
