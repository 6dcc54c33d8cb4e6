"""``harness triage`` and ``harness bisect`` (over commits or releases, either way)."""

import json
import sys
import tempfile
from pathlib import Path

import click

from ...fixtures import FIXTURES
from ..judge.checks import EXPLANATIONS
from ..judge.golden import GoldenError, write_atomic
from ..model import DEFAULT_VARIANTS, TRAINERS, VARIANTS
from ..project import ConfigError, load_config
from ..run.launch import DEFAULT_TIMEOUT
from ..tools import bisect as bisect_mod
from ..tools import release_bisect
from ..tools import triage as triage_mod
from ..tools.versions import VersionError, library_version
from .common import (SECONDS, check_names, fail_usage, filter_options, main, project_config, resolve_target,
                     select_cases)
from .sweep import release_source_options


@main.command("triage")
@click.option("--target", help="Target name or import spec.  [default: the project's, else reference]")
@click.option("--trainer", required=True, help="The failing case's trainer.")
@click.option("--fixture", required=True, help="The failing case's fixture.")
@click.option("--variant", default="fp32", show_default=True)
@click.option("--scenario", default="plain", show_default=True, help="The failing case's scenario.")
@click.option("--steps", type=click.IntRange(1, 1000), help="Steps.  [default: the project's, else 3]")
@click.option("--snapshots", "snapshots_dir", type=click.Path(file_okay=False),
              help="Golden snapshot folder.  [default: the project's, else snapshots/ in the project root]")
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=SECONDS, help="Seconds per run.")
@click.option("--target-version", help="Triage this released version of the target's library (installed aside).")
@release_source_options
def triage_command(target, trainer, fixture, variant, scenario, steps, snapshots_dir, timeout, target_version,
                   find_links, no_index):
    """Re-run a failing case under a ladder of toggles and diagnose which one flips it."""
    target_obj, cases = select_cases(target, (trainer,), (fixture,), (variant,), steps, scenarios=(scenario,))
    if not cases:
        fail_usage(f"scenario {scenario!r} of {trainer} does not run on {fixture} {variant}")
    case = cases[0]
    if target_version:
        if no_index and not find_links:
            fail_usage("--no-index needs --find-links: there would be nowhere to install releases from")
        try:
            click.get_current_context().with_resource(
                library_version(target_obj, target_version, find_links, not no_index))
        except VersionError as err:
            fail_usage(str(err))
        click.echo(f"{target_obj.name}: using release {target_version}")
    click.echo(f"harness triage {case.id}")

    def progress(rung):
        mark = "FLIPS" if rung["flips"] else "CLEARS" if rung.get("clears") else ""
        click.echo(f"  {rung['rung']:<12} {rung['status']:<5} {mark:<6} {rung['detail']}")

    snapshots = Path(snapshots_dir) if snapshots_dir else project_config().snapshots
    with tempfile.TemporaryDirectory(prefix="mlxth-triage-") as tmp:
        try:
            original, rungs = triage_mod.triage(case, snapshots, Path(tmp), timeout, target_obj.golden_key,
                                                on_rung=progress)
        except GoldenError as err:
            fail_usage(str(err))
    click.echo()
    click.echo(triage_mod.diagnosis(original, rungs))
    sys.exit(0 if any(r["flips"] or r.get("clears") for r in rungs) else 1)


@main.command("bisect")
@click.option("--repo", type=click.Path(exists=True, file_okay=False),
              help="The git repository whose commits are bisected.")
@click.option("--releases", "over_releases", is_flag=True,
              help="Bisect the target's published releases instead (no repository; --from/--to or --good/--bad "
                   "are version numbers).")
@click.option("--good", help="A revision where the cases pass (a regression is looked for).")
@click.option("--bad", help="A revision where they fail.")
@click.option("--from", "old", help="The older end; with --to, the flip is found whichever way it went.")
@click.option("--to", "new", help="The newer end.")
@click.option("--kind", "kinds", multiple=True,
              help="Failure kind(s) that make a revision bad (repeatable); default: any failing case.")
@filter_options
@release_source_options
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the result here (JSON).")
@click.option("--snapshots", "snapshots_dir", type=click.Path(file_okay=False),
              help="With --releases: the golden folder.  [default: snapshots/ in the project root]")
def bisect_command(repo, over_releases, good, bad, old, new, kinds, target, trainers, fixtures, models, variants,
                   scenarios, steps, find_links, no_index, report_path, snapshots_dir):
    """Find the commit (or release) at which the selected cases flipped.

    --good/--bad look for a regression (the first bad commit); --from/--to test
    both ends and find the flip either way: the first bad commit of a
    regression, or the first good commit of a fix.  Exit 0 when found.
    """
    if (good or bad) and (old or new):
        fail_usage("give either --good/--bad (a regression) or --from/--to (either way), not both")
    if not ((good and bad) or (old and new)):
        fail_usage("give both ends: --good and --bad, or --from and --to")
    unknown = [k for k in kinds if k not in EXPLANATIONS]
    if unknown:
        fail_usage(f"unknown --kind {', '.join(map(repr, unknown))}; known: {', '.join(EXPLANATIONS)}")
    direction = bisect_mod.REGRESSION if good else None
    first, last = (good, bad) if good else (old, new)
    if over_releases:
        if repo:
            fail_usage("--releases bisects the target's published releases: it takes no --repo")
        result = _bisect_releases(target, first, last, direction, kinds, trainers, fixtures, variants, scenarios, steps,
                                  find_links, no_index, snapshots_dir)
    else:
        if not repo:
            fail_usage("--repo is required (or --releases, to bisect the target's published releases)")
        # What the command line leaves out, each step's run takes from the project's configuration at
        # that commit (a target file resolves inside the checkout); goldens come from the folder it configures.
        run_args = [] if target is None else ["--target", target]
        run_args += [] if steps is None else ["--steps", str(steps)]
        models = [str(Path(m).resolve()) for m in models]
        for flag, values in (("--trainer", trainers), ("--fixture", fixtures), ("--model", models),
                             ("--variant", variants), ("--scenario", scenarios)):
            for value in values:
                run_args += [flag, value]
        fallback = None if target is not None else _checkout_target(repo)
        click.echo(f"harness bisect {first}..{last} in {repo}: harness run {' '.join(run_args)}"
                   + (f"\n  a commit whose table names no target runs the checkout's: {fallback}" if fallback else ""))
        try:
            result = bisect_mod.bisect(repo, first, last, run_args, kinds, direction, _goldens_in_repo(repo),
                                       fallback)
        except RuntimeError as err:
            fail_usage(str(err))
    click.echo(bisect_mod.format_report(result))
    if report_path:
        write_atomic(Path(report_path), json.dumps(result, indent=1) + "\n")
    sys.exit(0 if result["found"] else 1)


def _checkout_target(repo):
    """The target the repository's working tree configures, or None (a commit then runs its own table's)."""
    try:
        config = load_config(repo)
    except ConfigError as err:
        fail_usage(str(err))
    return config.target if "target" in config.keys else None


def _bisect_releases(target, first, last, direction, kinds, trainers, fixtures, variants, scenarios, steps,
                     find_links, no_index, snapshots_dir):
    target_obj = resolve_target(target)
    if any(s != "plain" for s in scenarios):
        fail_usage("--releases bisects the plain cases (the trainers' defaults); --scenario plain is the only choice")
    check_names("trainer", trainers, list(TRAINERS))
    check_names("fixture", fixtures, list(FIXTURES))
    check_names("variant", variants, list(VARIANTS))
    if not target_obj.distribution:
        fail_usage(f"target {target_obj.name!r} names no distribution, so it has no releases to bisect")
    if no_index and not find_links:
        fail_usage("--no-index needs --find-links: there would be nowhere to install releases from")
    selection = [(t, f, v) for t in trainers or target_obj.trainers() for f in fixtures or FIXTURES
                 for v in variants or DEFAULT_VARIANTS]
    snapshots = Path(snapshots_dir) if snapshots_dir else project_config().snapshots
    click.echo(f"harness bisect {target_obj.name} releases {first}..{last}: {len(selection)} case(s)")

    def on_step(entry):
        click.echo(f"  {entry['release']}: {entry['verdict']}" + (f" ({entry['reason']})" if entry.get("reason") else ""))

    try:
        return release_bisect.bisect_releases(
            target_obj, first, last, selection, kinds, direction, steps=steps or project_config().steps,
            snapshots=snapshots, jobs=2,
            timeout=DEFAULT_TIMEOUT, find_links=find_links, index=not no_index, on_step=on_step)
    except VersionError as err:
        fail_usage(str(err))


def _goldens_in_repo(repo) -> str:
    """The repository's golden folder (its configured ``snapshots``), relative to its root."""
    try:
        top = Path(bisect_mod.git(repo, "rev-parse", "--show-toplevel")).resolve()
    except RuntimeError:
        return "snapshots"  # not a repository: bisect itself says so
    try:
        config = load_config(top)
    except ConfigError as err:
        fail_usage(str(err))
    if config.root != top:  # no pyproject.toml of its own: the default folder
        return "snapshots"
    try:
        return config.snapshots.relative_to(top).as_posix()
    except ValueError:
        fail_usage(f"{config.file}: snapshots {config.snapshots} lies outside the repository {top}")
