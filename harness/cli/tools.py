"""``harness triage`` and ``harness bisect``."""

import json
import sys
import tempfile
from pathlib import Path

import click

from ..judge.golden import write_atomic
from ..project import default_snapshots
from ..run.launch import DEFAULT_TIMEOUT
from ..tools import bisect as bisect_mod
from ..tools import triage as triage_mod
from .common import fail_usage, filter_options, main, select_cases


@main.command("triage")
@click.option("--target", default="reference", show_default=True, help="Target name or import spec.")
@click.option("--trainer", required=True, help="The failing case's trainer.")
@click.option("--fixture", required=True, help="The failing case's fixture.")
@click.option("--variant", default="fp32", show_default=True)
@click.option("--steps", default=3, show_default=True, type=click.IntRange(1, 1000))
@click.option("--snapshots", "snapshots_dir", type=click.Path(file_okay=False),
              help="Golden snapshot folder.  [default: snapshots/ in the project root]")
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=float, help="Seconds per run.")
def triage_command(target, trainer, fixture, variant, steps, snapshots_dir, timeout):
    """Re-run a failing case under a ladder of toggles and diagnose which one flips it."""
    target_obj, cases = select_cases(target, (trainer,), (fixture,), (variant,), steps)
    case = cases[0]
    click.echo(f"harness triage {case.id}")

    def progress(rung):
        click.echo(f"  {rung['rung']:<12} {rung['status']:<5} {'FLIPS' if rung['flips'] else '':<6} {rung['detail']}")

    snapshots = Path(snapshots_dir) if snapshots_dir else default_snapshots()
    with tempfile.TemporaryDirectory(prefix="mlxth-triage-") as tmp:
        original, rungs = triage_mod.triage(case, snapshots, Path(tmp), timeout, target_obj.golden_key,
                                            on_rung=progress)
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
