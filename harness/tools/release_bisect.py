"""``harness bisect --releases``: the release at which selected cases flipped, either way.

No repository is needed: the target's releases between the two ends (as pip
lists them, from PyPI or a local folder of built packages) are bisected, each
one installed aside and its cases run as in the sweep (``sweep.run_release``).
Both ends are tested first; passing then failing is a regression (the first
bad release is found), failing then passing a fix (the first good release).
A release that cannot be installed or driven, or that lacks a selected
trainer, is skipped, and the answer is then a range.
"""

from .bisect import FIX, REGRESSION, ends_message, state_of
from .sweep import failures, run_release
from .versions import VersionError, releases


def test_release(target, release, selection, kinds, options) -> dict:
    """``{"release", "version", "failures", "verdict"}`` of one release (``"reason"`` when skipped)."""
    entry = run_release(target, release, selection, **options)
    out = {"release": release, "version": entry["version"], "failures": failures(entry), "rev": release}
    missing = sorted({t for t, _, _ in selection if t not in entry["offered"]})
    if entry["note"]:
        out.update(verdict="skip", reason=entry["note"])
    elif missing:
        out.update(verdict="skip", reason=f"the release does not offer {', '.join(missing)}")
    else:
        out["verdict"] = state_of(out["failures"], kinds)
        if out["verdict"] == "skip":
            out["reason"] = next(f["message"] for f in out["failures"] if f["kind"] == "import-error")
    return out


def bisect_releases(target, first, last, selection, kinds=(), direction=None, *, steps, snapshots, jobs, timeout,
                    find_links=None, index=True, on_step=None) -> dict:
    """Bisect the releases from ``first`` to ``last``; the result has the shape of ``bisect.bisect``'s."""
    listed = releases(target, first, last, find_links, index)
    if len(listed) < 2:
        raise VersionError(f"--from {first} and --to {last} are the same release: nothing to bisect")
    options = dict(steps=steps, snapshots=snapshots, jobs=jobs, timeout=timeout, find_links=find_links, index=index)
    steps_done = []

    def test(i):
        entry = test_release(target, listed[i], selection, kinds, options)
        steps_done.append(entry)
        if on_step is not None:
            on_step(entry)
        return entry

    old_entry = test(0)
    new_entry = None
    if old_entry["verdict"] != "skip" and (direction is None or old_entry["verdict"] == "good"):
        new_entry = test(len(listed) - 1)
    message = ends_message(first, last, old_entry, new_entry, direction, kinds)
    result = {"unit": "release", "direction": direction, "kinds": list(kinds), "found": None, "first_bad": None,
              "first_good": None, "releases": listed, "steps": steps_done}
    if message:
        return {**result, "message": [message]}
    found_direction = REGRESSION if old_entry["verdict"] == "good" else FIX
    lo, hi, skipped = 0, len(listed) - 1, set()
    while True:
        untested = [i for i in range(lo + 1, hi) if i not in skipped]
        if not untested:
            break
        middle = (lo + hi) / 2
        i = min(untested, key=lambda j: (abs(j - middle), j))
        entry = test(i)
        if entry["verdict"] == "skip":
            skipped.add(i)
        elif entry["verdict"] == old_entry["verdict"]:
            lo = i
        else:
            hi = i
    between = [listed[i] for i in sorted(skipped) if lo < i < hi]
    if between:
        return {**result, "direction": found_direction,
                "message": [f"the cases flipped between {listed[lo]} and {listed[hi]}, but "
                            f"{', '.join(between)} could not be tested"]}
    found = listed[hi]
    at = next(s for s in steps_done if s["release"] == found) if found_direction == REGRESSION else old_entry
    return {**result, "direction": found_direction, "found": found,
            "first_bad": found if found_direction == REGRESSION else None,
            "first_good": found if found_direction == FIX else None, "failures": at["failures"]}
