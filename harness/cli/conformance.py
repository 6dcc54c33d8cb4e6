"""``harness conformance`` (probe a library against the standard definitions) and
``harness equivalence`` (configurations that must train identically)."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click
from tabulate import tabulate

from ..conformance import conformance_outcomes, load_expected, unobserved_expected
from ..env import environment
from ..judge.equivalence import CLASSES, run_class, summarize
from ..judge.golden import write_atomic
from ..model import TRAINERS
from ..project import expected_findings
from ..run.launch import DEFAULT_TIMEOUT
from .common import SECONDS, main, new_run_id, project_config, select_cases, use_library_version

# Set in the process that probes a released version, started afresh so that the release is imported.
_RELEASE_CHILD_ENV = "MLXTH_CONFORMANCE_RELEASE"


@main.command("conformance")
@click.option("--target", help="Target name (entry point) or import spec.  [default: the project's, else reference]")
@click.option("--trainer", "trainers", multiple=True, help="Trainer(s); default all the target offers.")
@click.option("--fixture", "fixtures", multiple=True, help="Fixture(s); default all.")
@click.option("--reports", "reports_dir", type=click.Path(file_okay=False),
              help="Report folder.  [default: the project's, else reports/ in the project root]")
@click.option("--snapshots", "snapshots_dir", type=click.Path(file_okay=False),
              help="Folder of expected_findings.json.  [default: the project's golden folder, else snapshots/ "
                   "in the project root]")
@click.option("--target-version", help="Probe this released version of the target's library.")
def conformance_command(target, trainers, fixtures, reports_dir, snapshots_dir, target_version):
    """Probe a target library for deviations from the standard definitions.

    Loss agreement (which term differs), batch-size consistency and config
    fields that change nothing; findings listed in expected_findings.json
    beside the goldens are reported as expected and do not fail.
    """
    target_obj, _ = select_cases(target, trainers, fixtures, (), 1)
    target = target_obj.spec  # the project's, when the command line names none
    config = project_config()
    snapshots = Path(snapshots_dir) if snapshots_dir else config.snapshots
    reports_dir = reports_dir or config.reports
    if target_version and not os.environ.get(_RELEASE_CHILD_ENV):
        # The release must be imported before anything of the library is: probe in a fresh process.
        use_library_version(target_obj, target_version)
        argv = [a for a in sys.argv[1:]]
        cmd = [sys.executable, "-m", "mlxth.harness.cli", *argv]
        proc = subprocess.run(cmd, env={**os.environ, _RELEASE_CHILD_ENV: target_version})
        sys.exit(proc.returncode)
    expected = load_expected(expected_findings(snapshots))
    outcomes = conformance_outcomes(target_obj, tuple(trainers), tuple(fixtures), expected)
    rows = [(o["trainer"], o["fixture"], o["probe"], o["status"], o["signature"], o["statement"][:110])
            for o in outcomes]
    click.echo(tabulate(rows, headers=["trainer", "fixture", "probe", "status", "signature", "statement"]))
    for line in unobserved_expected(outcomes, expected):
        click.echo(f"expected finding not observed (fixed?): {line}")
    findings = [o for o in outcomes if o["status"] in ("expected", "unexpected")]
    unexpected = [o for o in findings if o["status"] == "unexpected"]
    library = f"{outcomes[0]['library']} {outcomes[0]['version']}" if outcomes else target
    click.echo(f"{library}: {len(unexpected)} unexpected, {len(findings) - len(unexpected)} expected findings")
    run_id = new_run_id()
    folder = Path(reports_dir) / run_id
    write_atomic(folder / "conformance.json", json.dumps(
        {"run_id": run_id, "target": target, "environment": environment(), "outcomes": outcomes}, indent=1,
        default=str) + "\n")
    version = findings[0]["version"] if findings else os.environ.get(_RELEASE_CHILD_ENV, "")
    lines = [f"# conformance of {target} ({version})", ""]
    for f in findings:
        lines.append(f"- **{f['trainer']} / {f['fixture']} / {f['probe']}** ({f['status']}): {f['statement']}  ")
        lines.append(f"  evidence: `{json.dumps(f['evidence'], default=str)[:400]}`")
    write_atomic(folder / "conformance.md", "\n".join(lines) + "\n")
    click.echo(f"report in {folder}")
    sys.exit(1 if unexpected else 0)


@main.command("equivalence")
@click.option("--target", help="Target name or import spec.  [default: the project's, else reference]")
@click.option("--trainer", "trainers", multiple=True, help="Trainer(s); default all the target offers.")
@click.option("--fixture", default="tiny-llama", show_default=True)
@click.option("--class", "class_name", default=next(iter(CLASSES)), show_default=True,
              type=click.Choice(list(CLASSES)))
@click.option("--steps", default=3, show_default=True, type=click.IntRange(1, 1000))
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=SECONDS, help="Seconds per member.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every class result here.")
def equivalence_command(target, trainers, fixture, class_name, steps, timeout, json_path):
    """Run an equivalence class per trainer and print how far each member is from the golden member."""
    target_obj, _ = select_cases(target, trainers, (fixture,), (), steps)
    results = []
    with tempfile.TemporaryDirectory(prefix="mlxth-eq-") as tmp:
        for trainer in trainers or tuple(t for t in TRAINERS if t in target_obj.trainers()):
            r = run_class(CLASSES[class_name], trainer, fixture, Path(tmp), target_obj, steps=steps, timeout=timeout)
            results.append(r)
            click.echo(f"{trainer}: {r['status']}" + (f" ({r['failure']['kind']}: {r['failure']['message']})"
                                                      if r["failure"] else ""))
    rows = summarize(results)
    click.echo(tabulate([[r["trainer"], r["status"], *(f"{r[k]:.2g}" for k in list(r)[3:])] for r in rows],
                        headers=["trainer", "status", "loss abs", "loss rel", "grad_norm rel", "metric abs",
                                 "tolerance used", "weights abs", "weights/update"]))
    if json_path:
        write_atomic(Path(json_path), json.dumps(results, indent=1, default=str) + "\n")
    sys.exit(0 if all(r["status"] == "pass" for r in results) else 1)
