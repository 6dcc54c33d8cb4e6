"""``harness bench``, ``harness triage`` and ``harness bisect``."""

import json
import sys
import tempfile
from pathlib import Path

import click
from tabulate import tabulate

from ...fixtures import FIXTURES
from ..env import environment
from ..judge.golden import GoldenError, write_atomic
from ..model import TRAINERS, VARIANTS
from ..project import default_snapshots
from ..run.launch import DEFAULT_TIMEOUT
from ..tools import bench as bench_mod
from ..tools import bisect as bisect_mod
from ..tools import triage as triage_mod
from .common import SECONDS, fail_usage, filter_options, main, select_cases


@main.command("bench")
@filter_options(multi_target=True)
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(0, 100), help="Untimed steps first.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results here.")
@click.option("--compare", "baseline_path", type=click.Path(exists=True, dir_okay=False),
              help="A baseline JSON from an earlier --json: fail on a real slowdown.")
@click.option("--threshold", default=10.0, show_default=True, type=float, help="Slowdown (percent) that fails.")
def bench_command(target, trainers, fixtures, variants, steps, warmup, json_path, baseline_path, threshold):
    """Benchmark step time per case (and gate on slowdowns with --compare)."""
    baseline = None
    if baseline_path:
        try:
            baseline = json.loads(Path(baseline_path).read_text())
            baseline["cases"]
        except (ValueError, KeyError, TypeError) as err:
            fail_usage(f"--compare {baseline_path}: not a harness bench JSON ({err})")
    selected = [select_cases(t, trainers, fixtures, variants, steps) for t in target]
    names = [target_obj.name for target_obj, _ in selected]
    # Side by side: each trainer x fixture x variant runs on every target before the next.
    cases = [c for group in zip(*[_by_key(cs) for _, cs in selected]) for c in group if c is not None]
    env = environment()
    click.echo(f"harness bench: {len(cases)} case(s), {warmup} warm-up + {steps} timed steps, "
               f"{env['backend']} ({env['device']})")

    def progress(result, done, total):
        if "error" in result:
            click.echo(f"[{done}/{total}] {result['id']}: error: {result['error']}")
        else:
            click.echo(f"[{done}/{total}] {result['id']}: {result['median_ms']:.1f} ms/step, "
                       f"ratio {result['ratio']:.2f}")

    results = bench_mod.bench(cases, warmup=warmup, steps=steps, on_result=progress)
    rows = [[c["id"], f"{c['median_ms']:.1f}", f"{c['p90_ms']:.1f}", f"{c['iqr_ms']:.1f}", f"{c['tokens_per_s']:.0f}",
             f"{c['peak_memory_mb']:.1f}", f"{c['warmup_s']:.2f}", f"{c['lower_bound_ms']:.1f}", f"{c['ratio']:.2f}"]
            if "error" not in c else [c["id"], "error"] + [""] * 7 for c in results["cases"]]
    click.echo(tabulate(rows, headers=["case", "median ms", "p90 ms", "IQR ms", "tokens/s", "peak MB",
                                       "warm-up s", "lower bound ms", "ratio"]))
    if len(names) > 1:
        click.echo()
        click.echo(side_by_side(results["cases"], names))
    if json_path:
        write_atomic(Path(json_path), json.dumps(results, indent=1) + "\n")
    if baseline is None:
        sys.exit(0)
    verdicts = bench_mod.compare(baseline, results, threshold)
    click.echo()
    click.echo(tabulate([[v["id"], v["status"], v["detail"]] for v in verdicts], headers=["case", "gate", "detail"]))
    sys.exit(1 if any(v["status"] == "slower" for v in verdicts) else 0)


def _by_key(cases):
    """Cases in matrix order, keyed so that targets line up (a target lacking a trainer gets None)."""
    index = {(c.trainer, c.fixture, c.variant): c for c in cases}
    return [index.get((t, f, v)) for t in TRAINERS for f in FIXTURES for v in VARIANTS]


def side_by_side(results, names):
    table = {}
    for r in results:
        table.setdefault((r["trainer"], r["fixture"], r["variant"]), {})[r["target"]] = r.get("median_ms")
    rows = [[tr, fx, v] + [("error" if row[n] is None else f"{row[n]:.1f}") if n in row else "-" for n in names]
            for (tr, fx, v), row in table.items()]
    return tabulate(rows, headers=["trainer", "fixture", "variant"] + [f"{n} ms/step" for n in names])


@main.command("triage")
@click.option("--target", default="reference", show_default=True, help="Target name or import spec.")
@click.option("--trainer", required=True, help="The failing case's trainer.")
@click.option("--fixture", required=True, help="The failing case's fixture.")
@click.option("--variant", default="fp32", show_default=True)
@click.option("--steps", default=3, show_default=True, type=click.IntRange(1, 1000))
@click.option("--snapshots", "snapshots_dir", type=click.Path(file_okay=False),
              help="Golden snapshot folder.  [default: snapshots/ in the project root]")
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=SECONDS, help="Seconds per run.")
def triage_command(target, trainer, fixture, variant, steps, snapshots_dir, timeout):
    """Re-run a failing case under a ladder of toggles and diagnose which one flips it."""
    target_obj, cases = select_cases(target, (trainer,), (fixture,), (variant,), steps)
    case = cases[0]
    click.echo(f"harness triage {case.id}")

    def progress(rung):
        click.echo(f"  {rung['rung']:<12} {rung['status']:<5} {'FLIPS' if rung['flips'] else '':<6} {rung['detail']}")

    snapshots = Path(snapshots_dir) if snapshots_dir else default_snapshots()
    with tempfile.TemporaryDirectory(prefix="mlxth-triage-") as tmp:
        try:
            original, rungs = triage_mod.triage(case, snapshots, Path(tmp), timeout, target_obj.golden_key,
                                                on_rung=progress)
        except GoldenError as err:
            fail_usage(str(err))
    click.echo()
    click.echo(triage_mod.diagnosis(original, rungs))
    sys.exit(0 if any(r["flips"] for r in rungs) else 1)


@main.command("bisect")
@click.option("--repo", required=True, type=click.Path(exists=True, file_okay=False), help="The git repository.")
@click.option("--good", required=True, help="A revision where the cases pass.")
@click.option("--bad", required=True, help="A revision where they fail.")
@filter_options
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the result here (JSON).")
def bisect_command(repo, good, bad, target, trainers, fixtures, variants, steps, report_path):
    """Find the first commit at which the selected cases go from passing to failing."""
    run_args = ["--target", target, "--steps", str(steps)]
    for flag, values in (("--trainer", trainers), ("--fixture", fixtures), ("--variant", variants)):
        for value in values:
            run_args += [flag, value]
    click.echo(f"harness bisect {good}..{bad} in {repo}: harness run {' '.join(run_args)}")
    try:
        result = bisect_mod.bisect(repo, good, bad, run_args)
    except RuntimeError as err:
        fail_usage(str(err))
    click.echo(bisect_mod.format_report(result))
    if report_path:
        write_atomic(Path(report_path), json.dumps(result, indent=1) + "\n")
    sys.exit(0 if result["first_bad"] else 1)
