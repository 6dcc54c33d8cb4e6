"""``harness run``: the case matrix, every case checked and held to its golden, and the reports."""

import os
import sys
import time
from pathlib import Path

import click

from ..env import environment
from ..judge import golden
from ..run.launch import DEFAULT_TIMEOUT, default_backend
from ..run.runner import Stop, run_cases, stop_on_signals, unfinished_result
from ..tools import report
from .common import (SECONDS, fail_usage, filter_options, main, new_run_id, project_config, select_cases,
                     use_library_version)

EXIT_INTERRUPTED = 3


def _check_writable(cases, reports_dir, run_id, snapshots_dir, key, backend, update_snapshots):
    """Every path the run will write, tried before the first case starts (a usage error otherwise)."""
    problem = golden.unwritable(Path(reports_dir) / run_id / "report.json")
    if problem:
        fail_usage(f"--reports {reports_dir}: {problem}")
    if update_snapshots:
        for path in dict.fromkeys(golden.golden_path(snapshots_dir, backend, key, c.trainer, c.fixture, c.variant,
                                                     c.scenario) for c in cases):
            problem = golden.unwritable(path)
            if problem:
                fail_usage(f"--update-snapshots: cannot write the golden {path}: {problem}")


def _check_configured_snapshots(config, update_snapshots):
    """The table's golden folder, held as --snapshots is: a typo there must not skip every golden check."""
    path, named = config.snapshots, "snapshots" in config.keys
    where = config.key("snapshots") if named else "snapshots"
    if path.exists() and not path.is_dir():
        fail_usage(f"{where}: {path} is not a folder")
    if named and not path.exists() and not update_snapshots:
        fail_usage(f"{where}: no such folder {path} (to record goldens there, add --update-snapshots)")


# Two workers on a 2-core CI machine; on a GPU host (16-32 cores, kernels queued on one card) the
# cases are mostly Python and launch overhead, so more workers overlap it.
DEFAULT_JOBS = min(8, max(2, (os.cpu_count() or 1) // 4))


@main.command("run")
@filter_options
@click.option("--reports", "reports_dir", type=click.Path(file_okay=False),
              help="Report folder.  [default: the project's, else reports/ in the project root]")
@click.option("--snapshots", "snapshots_dir", type=click.Path(file_okay=False),
              help="Golden snapshot folder; must exist unless --update-snapshots.  "
                   "[default: the project's, else snapshots/ in the project root]")
@click.option("--update-snapshots", is_flag=True, help="Record goldens of passing cases (never otherwise).")
@click.option("--strict", is_flag=True, help="A case without a golden is a configuration error (exit 2).")
@click.option("--jobs", default=DEFAULT_JOBS, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes: cases run at once, each worker importing MLX once for many cases.")
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=SECONDS, help="Seconds per case.")
@click.option("--ranks", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Data-parallel ranks per case (mlx.launch); the case's batch is split over them and the "
                   "trace held to the single-process golden within the equivalence tolerance. --jobs counts "
                   "processes: jobs // ranks cases run at once (under NCCL, one at a time).")
@click.option("--target-version", help="Run against this released version of the target's library "
                                       "(installed from PyPI into a throw-away folder).")
def run_command(target, trainers, fixtures, models, variants, scenarios, steps, reports_dir, snapshots_dir,
                update_snapshots, strict, jobs, timeout, ranks, target_version):
    """Run the case matrix, check every case, and write reports.

    Exit codes: 0 every case passed; 1 a case failed or errored; 2 a usage or
    configuration error (nothing ran); 3 the run was interrupted (SIGINT or
    SIGTERM): the reports hold the cases that finished, the others are marked
    interrupted or not run.
    """
    if ranks > 1 and update_snapshots:
        fail_usage("--update-snapshots records single-process goldens; run it without --ranks")
    if snapshots_dir and not Path(snapshots_dir).is_dir() and not update_snapshots:
        fail_usage(f"--snapshots {snapshots_dir}: no such folder (to record goldens there, add --update-snapshots)")
    target_obj, cases = select_cases(target, trainers, fixtures, variants, steps, ranks, models, scenarios)
    if ranks > 1 and not target_obj.data_parallel:
        fail_usage(f"--ranks {ranks}: target {target_obj.name} does not train data-parallel (a target that splits "
                   "a step over mlx.launch ranks, settings.ranks of them, says so with data_parallel = True)")
    if target_version:
        use_library_version(target_obj, target_version)
    # NCCL groups one at a time: 8 two-rank cases at once on 2 H200s ended 3 of them in rank-crash.
    jobs = 1 if ranks > 1 and default_backend(ranks) == "nccl" else max(1, jobs // ranks)
    config = project_config()
    if not snapshots_dir:
        _check_configured_snapshots(config, update_snapshots)
    snapshots_dir = Path(snapshots_dir) if snapshots_dir else config.snapshots
    reports_dir = Path(reports_dir) if reports_dir else config.reports
    env = environment()
    key = target_obj.golden_key
    if strict and not update_snapshots:
        missing = [c.id for c in cases if not golden.golden_path(
            snapshots_dir, env["backend"], key, c.trainer, c.fixture, c.variant, c.scenario).exists()]
        if missing:
            fail_usage(f"--strict: no golden for {len(missing)} case(s), first {missing[0]}")
    run_id = new_run_id()
    _check_writable(cases, reports_dir, run_id, snapshots_dir, key, env["backend"], update_snapshots)

    started = time.perf_counter()
    out = Path(reports_dir) / run_id
    logs = out / "logs"
    logs.mkdir(parents=True)
    done, timing, stop = {}, {}, Stop()

    def write(state, stopped_by=None):
        pending = "not finished when this report was written"
        results = [done.get(c.id) or unfinished_result(c, "not-run", pending) for c in cases]
        run = report.build_run(run_id, env, sys.argv[1:], results, time.perf_counter() - started, state,
                               stopped_by, timing)
        try:
            report.write_reports(Path(reports_dir), run)
        except OSError as err:  # writable when the run started; the run itself goes on
            click.echo(f"warning: cannot write the reports in {out}: {err}", err=True)
        return run

    per_case = f" of {ranks} ranks" if ranks > 1 else ""
    click.echo(f"harness run {run_id}: {len(cases)} case(s){per_case}, {jobs} job(s), {env['backend']} "
               f"({env['device']})")

    def progress(result, n, total):
        done[result["id"]] = result
        unheld = any(c["name"] == "golden" and c.get("reason") == golden.NO_GOLDEN for c in result["checks"])
        click.echo(f"[{n:>{len(str(total))}}/{total}] {result['status']:<5} {result['id']} "
                   f"({result['duration_s']:.1f}s)" + (f": {result['failure']['kind']}" if result["failure"] else "")
                   + ("; no golden" if unheld and not update_snapshots else ""))
        write("running")

    with stop_on_signals(stop):
        write("running")
        results = run_cases(cases, jobs=jobs, timeout=timeout, snapshots=snapshots_dir, golden_key=key,
                            update=update_snapshots, on_result=progress, logs=logs, stop=stop, timing=timing)
        done.update((r["id"], r) for r in results)
        interrupted = stop.is_set()
        run = write("interrupted" if interrupted else "complete", stop.reason if interrupted else None)
        if not any(logs.iterdir()):
            logs.rmdir()
        click.echo()
        click.echo(report.summary_table(results))
        click.echo()
        click.echo(report.skipped_line(results))
        if update_snapshots:
            click.echo(_golden_updates(results))
        if report.timing_line(run):
            click.echo(report.timing_line(run))
        ending = f"; interrupted by {stop.reason}" if interrupted else ""
        click.echo(f"{report.counts_line(run['summary'])} in {run['duration_s']:.1f}s{ending}; reports in {out}")
    c = run["summary"]
    unchecked = [ch.get("unchecked_steps", 0) for r in results for ch in r["checks"] if ch["name"] == "golden"]
    if any(unchecked):
        click.echo(f"golden: {sum(unchecked)} step(s) of {sum(map(bool, unchecked))} case(s) not checked: "
                   "more or fewer --steps than their goldens hold")
    sys.exit(EXIT_INTERRUPTED if interrupted else 0 if c["fail"] == c["error"] == 0 else 1)


def _golden_updates(results) -> str:
    """What --update-snapshots did: goldens written (with what changed in each) and left untouched."""
    golden_checks = [c for r in results for c in r["checks"] if c["name"] == "golden" and c["status"] == "pass"]
    written = [c["detail"] for c in golden_checks if not c["detail"].startswith("unchanged")]
    unchanged = len(golden_checks) - len(written)
    return "\n".join([f"goldens: {len(written)} written, {unchanged} unchanged"] + [f"  {w}" for w in written])
