"""``harness sweep``: the selected cases over a range of a target's releases, one table release x case."""

import sys
from pathlib import Path

import click

from ...fixtures import FIXTURES
from ..model import DEFAULT_VARIANTS, TRAINERS, VARIANTS
from ..run.launch import DEFAULT_TIMEOUT
from ..tools import sweep as sweep_mod
from ..tools.versions import VersionError, releases
from .common import check_names, fail_usage, main, new_run_id, project_config, resolve_target


def release_source_options(func):
    """Where releases come from: PyPI, or (also, or only) a local folder of built packages."""
    func = click.option("--no-index", is_flag=True, help="Install releases from --find-links only, not PyPI.")(func)
    return click.option("--find-links", type=click.Path(exists=True, file_okay=False),
                        help="A folder of built packages (wheels) to install releases from, as pip's "
                             "--find-links.")(func)


def list_releases(target_obj, first, last, find_links, no_index):
    if no_index and not find_links:
        fail_usage("--no-index needs --find-links: there would be nowhere to install releases from")
    try:
        return releases(target_obj, first, last, find_links, not no_index)
    except VersionError as err:
        fail_usage(str(err))


@main.command("sweep")
@click.option("--target", required=True, help="Target name (entry point) or import spec; it must name its "
                                               "library's distribution.")
@click.option("--from", "first", required=True, help="The oldest release to run.")
@click.option("--to", "last", required=True, help="The newest release to run.")
@click.option("--trainer", "trainers", multiple=True, help="Trainer(s); default all.")
@click.option("--fixture", "fixtures", multiple=True, help="Fixture(s); default all.")
@click.option("--variant", "variants", multiple=True, help="Variant(s); default fp32.")
@click.option("--steps", default=3, show_default=True, type=click.IntRange(1, 1000))
@release_source_options
@click.option("--reports", "reports_dir", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--snapshots", "snapshots_dir", type=click.Path(file_okay=False),
              help="Golden snapshot folder.  [default: snapshots/ in the project root]")
@click.option("--jobs", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=float, help="Seconds per case.")
@click.option("--workaround", is_flag=True, help="Apply the target's start-up workaround for this backend (as "
                                                 "`harness conformance` retries with it).")
def sweep_command(target, first, last, trainers, fixtures, variants, steps, find_links, no_index, reports_dir,
                  snapshots_dir, jobs, timeout, workaround):
    """Run the selected cases on every release from --from to --to; print one table release x case.

    Each cell is the case's status and failure kind on that release ("not
    offered" where the release lacks the trainer).  Exit 0 when every case
    that ran passed, 1 otherwise.
    """
    target_obj = resolve_target(target)
    check_names("trainer", trainers, list(TRAINERS))
    check_names("fixture", fixtures, list(FIXTURES))
    check_names("variant", variants, list(VARIANTS))
    if not target_obj.distribution:
        fail_usage(f"target {target_obj.name!r} names no distribution, so it has no releases to sweep")
    extra = {}
    if workaround:
        offered = target_obj.workaround()
        if not offered:
            fail_usage(f"--workaround: target {target_obj.name!r} has none")
        extra, description = offered
        click.echo(f"workaround: {description}")
    found = list_releases(target_obj, first, last, find_links, no_index)
    selection = [(t, f, v) for t in trainers or TRAINERS for f in fixtures or FIXTURES
                 for v in variants or DEFAULT_VARIANTS]
    snapshots = Path(snapshots_dir) if snapshots_dir else project_config().snapshots
    run_id = new_run_id()
    click.echo(f"harness sweep {run_id}: {target_obj.name}, {len(found)} release(s) {found[0]} to {found[-1]}, "
               f"{len(selection)} case(s) each")

    def on_release(row):
        ran = [f"{k.rsplit('/', 1)[0]} {sweep_mod.cell_text(c, every_kind=True)}" for k, c in row["cells"].items()
               if c["status"] != "-"]
        click.echo(f"  {row['release']}: " + (row["note"] or "; ".join(ran)))

    result = sweep_mod.sweep(target_obj, found, selection, steps=steps, snapshots=snapshots, jobs=jobs,
                             timeout=timeout, find_links=find_links, index=not no_index, extra=extra,
                             on_release=on_release)
    result["run_id"] = run_id
    out = sweep_mod.write(Path(reports_dir), run_id, result)
    click.echo()
    click.echo(sweep_mod.table(result))
    c = sweep_mod.counts(result)
    click.echo(f"\n{c['pass']} passed, {c['fail']} failed, {c['error']} errors, {c['not offered']} not offered, "
               f"{c['not run']} not run; reports in {out}")
    sys.exit(0 if c["fail"] == c["error"] == c["not run"] == 0 else 1)
