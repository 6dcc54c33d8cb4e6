"""Which term of the standard loss does a library change?

When a library's reported loss disagrees with the standard formula, the loss
is recomputed with each term varied (scored tokens, length normalisation, NLL
averaging, the odds term, the margin, the reference, KTO's KL point and
weights), so that the smallest set of changes reproducing every reported
value can be stated in plain words.
"""

import itertools

import numpy as np

from ..judge import formulas
from ..judge.recompute import token_logps

PAIRS = ("dpo", "orpo", "simpo")
RTOL, ATOL = 2e-5, 2e-6  # fp32 library vs float64 recomputation on the same rows


def _common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


SCOPES = {  # name -> plain statement of what a library scores instead of completion + EOS
    "completion+eos": "",
    "completion": "scores the completion without its EOS token",
    "sequence": "scores every token of prompt + completion after the first (the prompt too), without the EOS",
    "sequence+eos": "scores every token of prompt + completion after the first (the prompt too)",
    "after-shared-prefix": ("scores only the tokens after the longest common token prefix of the chosen and "
                            "rejected sequences (a first completion token both share is dropped), without the EOS"),
}


def _scored(tl, n_prompt, shared):
    """Sums and counts of ``tl`` (token log-probs of prompt + completion + EOS) per scope."""
    last = len(tl) + 1  # sequence length with EOS
    spans = {"completion+eos": (n_prompt, last), "completion": (n_prompt, last - 1), "sequence": (1, last - 1),
             "sequence+eos": (1, last)}
    if shared is not None:
        spans["after-shared-prefix"] = (shared, last - 1)
    return {s: (float(tl[a - 1:b - 1].sum()), b - a) for s, (a, b) in spans.items()}


def _quantities(model, rows, fields_, shift=False):
    """Per scope: arrays of summed log-probs and token counts per row and field; and sequence lengths."""
    out = {}
    for field in fields_:
        comps = [r[f"{field}_ids"] for r in rows]
        if shift:
            comps = comps[-1:] + comps[:-1]
        per_row = []
        for r, c in zip(rows, comps):
            shared = None
            if len(fields_) == 2:
                other = fields_[1] if field == fields_[0] else fields_[0]
                a = r["prompt_ids"] + r[f"{field}_ids"][:-1]
                b = r["prompt_ids"] + r[f"{other}_ids"][:-1]
                shared = _common_prefix(a, b)
            tl = token_logps(model, r["prompt_ids"] + c)
            per_row.append((_scored(tl, len(r["prompt_ids"]), shared), len(r["prompt_ids"]) + len(c) - 1))
        out[field] = {s: (np.array([q[s][0] for q, _ in per_row]), np.array([q[s][1] for q, _ in per_row], float))
                      for s in per_row[0][0]}
        out[field]["seqlen"] = np.array([n for _, n in per_row], float)
    return out


def _choices(trainer, hp):
    """Per term: the standard choice first, then the alternatives, each with its plain statement."""
    scopes = [(s, SCOPES[s]) for s in SCOPES if trainer in PAIRS or s != "after-shared-prefix"]
    denom = [("tokens", ""), ("seqlen", "length-normalises by the whole sequence length (prompt + completion, "
                                         "no EOS) instead of the completion's token count")]
    if trainer == "dpo":
        form = [(hp["loss_type"], "")]
        if hp["loss_type"] != "sigmoid":
            form.append(("sigmoid", f"uses the sigmoid loss although loss_type is {hp['loss_type']!r}"))
        smooth = [(hp["label_smoothing"], "")]
        if hp["label_smoothing"]:
            smooth.append((0.0, "ignores label_smoothing"))
        ref = [("model", ""), ("policy", "uses the detached policy itself as the reference (log-ratio 0 in value)")]
        return {"scope": scopes, "denominator": denom, "form": form, "label_smoothing": smooth, "reference": ref}
    if trainer == "orpo":
        return {"scope": scopes, "denominator": denom,
                "nll": [("token-mean", ""), ("sequence-mean", "averages the NLL per sequence and then over the "
                                                           "batch, instead of over all chosen tokens of the batch")],
                "nll_scope": [("completion", ""),
                              ("prompt+completion", "takes the NLL over the prompt's tokens too (every token after "
                                                    "the first, EOS included), as TRL's ORPO does, where the "
                                                    "standard takes it over the completion")],
                "odds": [("log-odds", ""),
                         ("summed-difference", "uses the difference of summed log-probs (the log probability ratio) "
                                               "where the standard uses the log-odds of the length-averaged "
                                               "probabilities"),
                         ("averaged-difference", "uses the difference of length-averaged log-probs instead of the "
                                                 "log-odds")]}
    if trainer == "simpo":
        margin = [("minus-gamma", ""),
                  ("minus-beta-gamma", "multiplies the margin gamma by beta: beta*(delta - gamma) instead of "
                                       "beta*delta - gamma")]
        return {"scope": scopes, "denominator": denom, "margin": margin}
    return {"scope": scopes,
            "form": [("one-minus-sigmoid", ""), ("neg-log-sigmoid", "uses -log sigmoid(.) where the standard uses "
                                                                    "1 - sigmoid(.)")],
            "reference": [("model", ""), ("policy", "uses the detached policy itself as the reference (log-ratio 0 "
                                                    "in value)")],
            "kl_point": [("batch", ""), ("zero", "has no KL reference point z (z = 0)")],
            "weights": [("configured", ""), ("ignored", "ignores desirable_weight / undesirable_weight")]}


def _variant_loss(trainer, hp, v, pol, ref, rows, mism=None):
    with np.errstate(divide="ignore", invalid="ignore"):  # a scope with no tokens gives NaN: never a match
        return _variant_loss_(trainer, hp, v, pol, ref, rows, mism)


def _variant_loss_(trainer, hp, v, pol, ref, rows, mism):
    s = v["scope"]
    if trainer in ("dpo", "orpo", "simpo"):
        (pc, nc), (pr, nr) = pol["chosen"][s], pol["rejected"][s]
        dc, dr = (nc, nr) if v.get("denominator") == "tokens" else (pol["chosen"]["seqlen"], pol["rejected"]["seqlen"])
    if trainer == "dpo":
        rc, rr = (ref["chosen"][s][0], ref["rejected"][s][0]) if v["reference"] == "model" else (pc, pr)
        if v["form"] == "ipo":
            pc, pr, rc, rr = pc / dc, pr / dr, rc / dc, rr / dr
        return formulas.dpo(pc, pr, rc, rr, beta=hp["beta"], loss_type=v["form"],
                            label_smoothing=v["label_smoothing"])[0]
    if trainer == "orpo":
        avg_c, avg_r = pc / dc, pr / dr
        nc_, dn = (pc, dc) if v.get("nll_scope", "completion") == "completion" else pol["chosen"]["sequence+eos"]
        nll = -nc_.sum() / dn.sum() if v["nll"] == "token-mean" else -np.mean(nc_ / dn)
        if v["odds"] == "log-odds":
            odds = (avg_c - formulas.log1mexp(avg_c)) - (avg_r - formulas.log1mexp(avg_r))
        else:
            odds = pc - pr if v["odds"] == "summed-difference" else avg_c - avg_r
        return float(nll - hp["beta"] * np.mean(formulas.log_sigmoid(odds)))
    if trainer == "simpo":
        delta = pc / dc - pr / dr
        z = hp["beta"] * delta - hp["gamma"] if v["margin"] == "minus-gamma" else hp["beta"] * (delta - hp["gamma"])
        return float(np.mean(formulas.neg_log_sigmoid(z)))
    # kto
    p, r = pol["completion"][s][0], ref["completion"][s][0]
    ratio = p - r if v["reference"] == "model" else np.zeros_like(p)
    z = 0.0
    if v["kl_point"] == "batch" and v["reference"] == "model":
        z = formulas.kto_z(mism[0]["completion"][s][0], mism[1]["completion"][s][0])
    labels = np.array([bool(row["label"]) for row in rows])
    wd, wu = (hp["desirable_weight"], hp["undesirable_weight"]) if v["weights"] == "configured" else (1.0, 1.0)
    b = hp["beta"]
    if v["form"] == "one-minus-sigmoid":
        losses = np.where(labels, wd * formulas.sigmoid(-b * (ratio - z)), wu * formulas.sigmoid(-b * (z - ratio)))
    else:
        losses = np.where(labels, wd * formulas.neg_log_sigmoid(b * (ratio - z)),
                          wu * formulas.neg_log_sigmoid(b * (z - ratio)))
    return float(np.mean(losses))


def _variants(trainer, hp):
    terms = _choices(trainer, hp)
    names = list(terms)
    for combo in itertools.product(*(terms[n] for n in names)):
        variant = {n: c[0] for n, c in zip(names, combo)}
        changes = [(n, c[0], c[1]) for n, c, std in zip(names, combo, (terms[n][0] for n in names)) if c != std]
        yield variant, changes


def _close_enough(a, b):
    return abs(a - b) <= ATOL + RTOL * abs(b)
