"""``harness run``: the case matrix, every case checked and held to its golden, and the reports."""

import os
import sys
import time
from pathlib import Path

import click

from ..env import environment
from ..judge import golden
from ..run.launch import DEFAULT_TIMEOUT, run_cases
from ..tools import report
from .common import (fail_usage, filter_options, main, new_run_id, project_config, select_cases,
                     use_library_version)


@main.command("run")
@filter_options
@click.option("--reports", "reports_dir", type=click.Path(file_okay=False),
              help="Report folder.  [default: the project's, else reports/ in the project root]")
@click.option("--snapshots", "snapshots_dir", type=click.Path(file_okay=False),
              help="Golden snapshot folder.  [default: the project's, else snapshots/ in the project root]")
@click.option("--update-snapshots", is_flag=True, help="Record goldens of passing cases (never otherwise).")
@click.option("--strict", is_flag=True, help="A case without a golden is a configuration error (exit 2).")
@click.option("--jobs", default=min(2, os.cpu_count() or 1), show_default=True, type=click.IntRange(1, 64))
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=float, help="Seconds per case.")
@click.option("--ranks", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Data-parallel ranks per case (mlx.launch); the case's batch is split over them and the "
                   "trace held to the single-process golden within the equivalence tolerance. --jobs counts "
                   "processes: jobs // ranks cases run at once.")
@click.option("--target-version", help="Run against this released version of the target's library "
                                       "(installed from PyPI into a throw-away folder).")
def run_command(target, trainers, fixtures, models, variants, steps, reports_dir, snapshots_dir, update_snapshots,
                strict, jobs, timeout, ranks, target_version):
    """Run the case matrix, check every case, and write reports."""
    if ranks > 1 and update_snapshots:
        fail_usage("--update-snapshots records single-process goldens; run it without --ranks")
    target_obj, cases = select_cases(target, trainers, fixtures, variants, steps, ranks, models)
    if target_version:
        use_library_version(target_obj, target_version)
    jobs = max(1, jobs // ranks)
    config = project_config()
    snapshots_dir = Path(snapshots_dir) if snapshots_dir else config.snapshots
    reports_dir = Path(reports_dir) if reports_dir else config.reports
    env = environment()
    key = target_obj.golden_key
    if strict and not update_snapshots:
        missing = [c.id for c in cases if not golden.golden_path(
            snapshots_dir, env["backend"], key, c.trainer, c.fixture, c.variant).exists()]
        if missing:
            fail_usage(f"--strict: no golden for {len(missing)} case(s), first {missing[0]}")

    started = time.perf_counter()
    run_id = new_run_id()
    per_case = f" of {ranks} ranks" if ranks > 1 else ""
    click.echo(f"harness run {run_id}: {len(cases)} case(s){per_case}, {jobs} job(s), {env['backend']} "
               f"({env['device']})")

    def progress(result, done, total):
        click.echo(f"[{done:>{len(str(total))}}/{total}] {result['status']:<5} {result['id']} "
                   f"({result['duration_s']:.1f}s)" + (f": {result['failure']['kind']}" if result["failure"] else ""))

    results = run_cases(cases, jobs=jobs, timeout=timeout, snapshots=snapshots_dir, golden_key=key,
                        update=update_snapshots, on_result=progress)
    run = {"run_id": run_id, "environment": env, "command": sys.argv[1:], "summary": report.counts(results),
           "duration_s": round(time.perf_counter() - started, 3), "cases": results}
    out = report.write_reports(Path(reports_dir), run)
    click.echo()
    click.echo(report.summary_table(results))
    c = run["summary"]
    click.echo(f"\n{c['pass']} passed, {c['fail']} failed, {c['error']} errors in {run['duration_s']:.1f}s; "
               f"reports in {out}")
    unchecked = [ch.get("unchecked_steps", 0) for r in results for ch in r["checks"] if ch["name"] == "golden"]
    if any(unchecked):
        click.echo(f"golden: {sum(unchecked)} step(s) of {sum(map(bool, unchecked))} case(s) not checked: "
                   "more or fewer --steps than their goldens hold")
    sys.exit(0 if c["fail"] == c["error"] == 0 else 1)
