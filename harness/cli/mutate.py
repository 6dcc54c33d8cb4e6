"""``harness mutate``: the mutation score of the default ``harness run`` on this project's own trainers."""

import json
import sys
from pathlib import Path

import click

from ..judge.golden import write_atomic
from ..tools import mutate as mutate_mod
from .common import fail_usage, main, new_run_id, project_config, select_cases
from .run import run_command


def _check_run_args(run_args):
    """Parse RUN_ARGS as ``harness run`` would and check its names, so a typo fails once, here."""
    reserved = [a for a in run_args if a.split("=")[0] in mutate_mod.RESERVED]
    if reserved:
        fail_usage(f"harness run argument {reserved[0]} is set by harness mutate itself")
    try:
        ctx = run_command.make_context("harness run", list(run_args))
    except click.ClickException as err:
        fail_usage(f"harness run arguments {' '.join(run_args)!r}: {err.format_message()}")
    p = ctx.params
    select_cases("reference", p["trainers"], p["fixtures"], p["variants"], p["steps"], p["ranks"])


@main.command("mutate", context_settings={"ignore_unknown_options": True})
@click.option("--mutant", "mutant_ids", multiple=True, help="Run only this mutant (repeat for several).")
@click.option("--reruns", default=10, show_default=True, type=click.IntRange(0, 1000),
              help="Unmodified runs of the same matrix; any failure among them is a false alarm.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Harness runs at once (each runs its own cases with harness run's default jobs).")
@click.option("--timeout", default=mutate_mod.DEFAULT_TIMEOUT, show_default=True, type=float,
              help="Seconds per harness run; a run past it is killed and counts as broken.")
@click.option("--catalogue", "catalogue_path", type=click.Path(exists=True, dir_okay=False),
              help="Mutant catalogue (TOML).  [default: the one shipped with the harness]")
@click.option("--snapshots", "snapshots_dir", type=click.Path(file_okay=False),
              help="Golden snapshot folder copied into each run.  [default: snapshots/ in the project root]")
@click.option("--reports", "reports_dir", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--rescore", "rescore_path", type=click.Path(exists=True, dir_okay=False),
              help="Judge the runs of an earlier mutation.json against the catalogue as it is now (its "
                   "kinds edited), running nothing.")
@click.option("--gate", is_flag=True, help="Exit 1 below the thresholds (caught >= 95%, right kind >= 90%, "
                                           "0 false alarms).")
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED)
def mutate_command(mutant_ids, reruns, jobs, timeout, catalogue_path, snapshots_dir, reports_dir, rescore_path,
                   gate, run_args):
    """Apply each mutant of trainers/ to a copy of the project, run `harness run RUN_ARGS` there, and score
    how many the run catches with the right failure kind.  RUN_ARGS (e.g. --trainer dpo --fixture tiny-llama)
    go to harness run unchanged; by default it runs the default matrix."""
    try:
        mutants = mutate_mod.load_catalogue(catalogue_path)
        mutate_mod.check_catalogue(mutants)
    except mutate_mod.CatalogueError as err:
        fail_usage(str(err))
    known = [m.id for m in mutants]
    unknown = [i for i in mutant_ids if i not in known]
    if unknown:
        fail_usage(f"unknown mutant {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    if mutant_ids:
        mutants = [m for m in mutants if m.id in mutant_ids]
    _check_run_args(run_args)
    snapshots = Path(snapshots_dir) if snapshots_dir else project_config().snapshots
    run_id = new_run_id()
    if rescore_path:
        try:
            score, run_args = mutate_mod.rescored(rescore_path, mutants)
        except mutate_mod.CatalogueError as err:
            fail_usage(str(err))
        return _finish(score, run_args, reports_dir, run_id, gate)
    click.echo(f"harness mutate {run_id}: {len(mutants)} mutant(s), {reruns} unmodified rerun(s), {jobs} job(s); "
               f"harness run {' '.join(run_args) or '(default matrix)'}")
    done = {"mutant": 0, "rerun": 0}

    def progress(kind, result):
        done[kind] += 1
        total = len(mutants) if kind == "mutant" else reruns
        name = result["id"] if kind == "mutant" else "unmodified"
        kinds = ", ".join(sorted(set(result["cases"].values())))
        extra = f" ({'right' if result.get('right_kind') else 'wrong'} kind: {kinds})" if result["status"] == "caught" \
            and kind == "mutant" else f" ({kinds})" if kinds else ""
        reason = f": {result['reason'][0][:120]}" if result["status"] == "broken" else ""
        click.echo(f"[{kind} {done[kind]}/{total}] {name}: {result['status']}{extra}{reason} "
                   f"({result['duration_s']:.0f}s)")

    score = mutate_mod.score(mutants, run_args, reruns=reruns, jobs=jobs, snapshots=snapshots, timeout=timeout,
                             on_result=progress)
    _finish(score, run_args, reports_dir, run_id, gate)


def _finish(score, run_args, reports_dir, run_id, gate):
    click.echo()
    click.echo(mutate_mod.table(score))
    click.echo()
    click.echo(mutate_mod.todo(score))
    summary = score.summary()
    out = Path(reports_dir) / run_id
    write_atomic(out / "mutation.json", json.dumps(score.to_json(run_args), indent=1) + "\n")
    write_atomic(out / "mutation.md", mutate_mod.markdown(score, run_args))
    click.echo(f"\n{mutate_mod.summary_line(summary)}; reports in {out}")
    if gate:
        click.echo(f"gate: {'pass' if summary['gate'] else 'FAIL'}")
        sys.exit(0 if summary["gate"] else 1)
    sys.exit(0)
