"""The ``harness`` command line.

Exit codes: 0 every case passed; 1 a case failed or regressed; 2 a usage or
configuration error (unknown names, a missing golden in ``--strict`` mode,
an unloadable target), always with a one-line reason.
"""

import datetime
import os
import secrets
import sys
import time
from pathlib import Path

import click
from tabulate import tabulate

from mlxth.fixtures import FIXTURES

from . import golden, report
from .cases import DEFAULT_VARIANTS, TRAINERS, VARIANTS, build_matrix
from .env import environment
from .runner import DEFAULT_TIMEOUT, run_cases
from .target import TargetError, load_target, registered_targets


def _fail_usage(message: str):
    raise click.UsageError(message)


def _resolve_target(name):
    try:
        return load_target(name)
    except TargetError as err:
        _fail_usage(str(err))


def _check_names(kind, given, known):
    unknown = [g for g in given if g not in known]
    if unknown:
        _fail_usage(f"unknown {kind} {', '.join(map(repr, unknown))}; known: {', '.join(known)}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Reproducibility and regression harness for MLX preference and RL trainers."""


@main.command("list")
def list_command():
    """List targets, trainers, fixtures, variants and equivalence classes."""
    rows = []
    for name in sorted(registered_targets()):
        try:
            trainers = ", ".join(load_target(name).trainers())
        except Exception as err:  # noqa: BLE001 - a broken third-party target is listed, not fatal
            trainers = f"(cannot load: {err})"
        rows.append([name, trainers])
    click.echo(tabulate(rows, headers=["target", "trainers"]))
    click.echo()
    click.echo("trainers: " + ", ".join(TRAINERS))
    click.echo("fixtures: " + ", ".join(FIXTURES))
    click.echo("variants: " + ", ".join(f"{k}{' (default)' if k in DEFAULT_VARIANTS else ''}" for k in VARIANTS))
    from .equivalence import CLASSES, TOLERANCES

    click.echo()
    click.echo("equivalence classes (the first member is the golden):")
    for cls in CLASSES.values():
        click.echo(f"  {cls.name}: {cls.describe()}")
    rows = [[t, f"{tol.rtol:g}", f"{tol.atol:g}", f"{tol.weights:g}"] for t, tol in TOLERANCES.items()]
    click.echo(tabulate(rows, headers=["trainer", "rtol", "atol", "weights (x largest update)"]))


def filter_options(func=None, *, multi_target=False):
    if func is None:
        return lambda f: filter_options(f, multi_target=multi_target)
    options = [
        click.option("--target", default=("reference",) if multi_target else "reference", show_default=True,
                     multiple=multi_target,
                     help="Target name (entry point) or import spec module:object / file.py:object"
                          + (" (repeat to compare targets side by side)." if multi_target else ".")),
        click.option("--trainer", "trainers", multiple=True, help="Trainer(s) to run; default all."),
        click.option("--fixture", "fixtures", multiple=True, help="Fixture(s) to run; default all."),
        click.option("--variant", "variants", multiple=True, help="Variant(s); default fp32."),
        click.option("--steps", default=3, show_default=True, type=click.IntRange(1, 1000)),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _use_library_version(target_obj, version):
    """Workers of this command import ``version`` of the target's library."""
    from .sweep import VersionError, library_version

    try:
        click.get_current_context().with_resource(library_version(target_obj, version))
    except VersionError as err:
        _fail_usage(str(err))
    click.echo(f"{target_obj.name}: using release {version}")


def select_cases(target, trainers, fixtures, variants, steps):
    where, sep, attr = target.rpartition(":")
    if sep and where.endswith(".py"):  # a file spec must not depend on the worker's folder
        target = f"{Path(where).resolve()}:{attr}"
    target_obj = _resolve_target(target)
    _check_names("trainer", trainers, [t for t in TRAINERS if t in target_obj.trainers()])
    _check_names("fixture", fixtures, list(FIXTURES))
    _check_names("variant", variants, list(VARIANTS))
    return target_obj, build_matrix(target_obj, trainers, fixtures, variants, steps, spec=target)


@main.command("run")
@filter_options
@click.option("--reports", "reports_dir", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--snapshots", "snapshots_dir", default=str(golden.DEFAULT_DIR), show_default=True,
              type=click.Path(file_okay=False), help="Golden snapshot folder.")
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
def run_command(target, trainers, fixtures, variants, steps, reports_dir, snapshots_dir, update_snapshots,
                strict, jobs, timeout, ranks, target_version):
    """Run the case matrix, check every case, and write reports."""
    target_obj, cases = select_cases(target, trainers, fixtures, variants, steps)
    if target_version:
        _use_library_version(target_obj, target_version)
    if ranks > 1:
        if update_snapshots:
            _fail_usage("--update-snapshots records single-process goldens; run it without --ranks")
        from dataclasses import replace

        from .cases import case_settings

        try:
            cases = [replace(c, settings=case_settings(c.trainer, c.variant, steps, ranks)) for c in cases]
        except ValueError as err:
            _fail_usage(f"--ranks {ranks}: {err}")
        jobs = max(1, jobs // ranks)
    env = environment()
    key = getattr(target_obj, "golden_key", target_obj.name)
    if strict and not update_snapshots:
        missing = [c.id for c in cases if not golden.golden_path(
            snapshots_dir, env["backend"], key, c.trainer, c.fixture, c.variant).exists()]
        if missing:
            _fail_usage(f"--strict: no golden for {len(missing)} case(s), first {missing[0]}")

    started = time.perf_counter()
    run_id = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
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
    sys.exit(0 if c["fail"] == c["error"] == 0 else 1)


@main.command("bench")
@filter_options(multi_target=True)
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(0, 100), help="Untimed steps first.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results here.")
@click.option("--compare", "baseline_path", type=click.Path(exists=True, dir_okay=False),
              help="A baseline JSON from an earlier --json: fail on a real slowdown.")
@click.option("--threshold", default=10.0, show_default=True, type=float, help="Slowdown (percent) that fails.")
def bench_command(target, trainers, fixtures, variants, steps, warmup, json_path, baseline_path, threshold):
    """Benchmark step time per case (and gate on slowdowns with --compare)."""
    import json

    from . import bench as bench_mod

    baseline = None
    if baseline_path:
        try:
            baseline = json.loads(Path(baseline_path).read_text())
            baseline["cases"]
        except (ValueError, KeyError, TypeError) as err:
            _fail_usage(f"--compare {baseline_path}: not a harness bench JSON ({err})")
    per_target = [select_cases(t, trainers, fixtures, variants, steps)[1] for t in target]
    # Side by side: each trainer x fixture x variant runs on every target before the next.
    cases = [c for group in zip(*[_by_key(cs) for cs in per_target]) for c in group if c is not None]
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
    if len(target) > 1:
        click.echo()
        click.echo(side_by_side(results["cases"], target))
    if json_path:
        golden.write_atomic(Path(json_path), json.dumps(results, indent=1) + "\n")
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


def side_by_side(results, targets):
    names = [load_target(t).name for t in targets]
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
@click.option("--snapshots", "snapshots_dir", default=str(golden.DEFAULT_DIR), show_default=True,
              type=click.Path(file_okay=False))
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=float, help="Seconds per run.")
def triage_command(target, trainer, fixture, variant, steps, snapshots_dir, timeout):
    """Re-run a failing case under a ladder of toggles and diagnose which one flips it."""
    import tempfile

    from . import triage as triage_mod

    target_obj, cases = select_cases(target, (trainer,), (fixture,), (variant,), steps)
    case = cases[0]
    click.echo(f"harness triage {case.id}")

    def progress(rung):
        click.echo(f"  {rung['rung']:<12} {rung['status']:<5} {'FLIPS' if rung['flips'] else '':<6} {rung['detail']}")

    with tempfile.TemporaryDirectory(prefix="mlxth-triage-") as tmp:
        original, rungs = triage_mod.triage(case, Path(snapshots_dir), Path(tmp), timeout,
                                            getattr(target_obj, "golden_key", target_obj.name), on_rung=progress)
    click.echo()
    click.echo(triage_mod.diagnosis(original, rungs))
    sys.exit(0 if any(r["flips"] for r in rungs) else 1)


@main.command("conformance")
@click.option("--target", required=True, help="Target name (entry point) or import spec.")
@click.option("--trainer", "trainers", multiple=True, help="Trainer(s); default all the target offers.")
@click.option("--fixture", "fixtures", multiple=True, help="Fixture(s); default all.")
@click.option("--reports", "reports_dir", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--target-version", help="Probe this released version of the target's library.")
def conformance_command(target, trainers, fixtures, reports_dir, target_version):
    """Probe a target library for deviations from the standard definitions.

    Loss agreement (which term differs), batch-size consistency and config
    fields that change nothing; findings listed in
    snapshots/expected_findings.json are reported as expected and do not fail.
    """
    import json
    import subprocess
    import tempfile

    target_obj, _ = select_cases(target, trainers, fixtures, (), 1)
    if target_version:
        _use_library_version(target_obj, target_version)
    with tempfile.TemporaryDirectory(prefix="mlxth-conformance-") as tmp:
        out = Path(tmp) / "outcomes.json"
        cmd = [sys.executable, "-m", "mlxth.harness.conformance", "--target", target, "--json", str(out)]
        for flag, values in (("--trainer", trainers), ("--fixture", fixtures)):
            for value in values:
                cmd += [flag, value]
        proc = subprocess.run(cmd, cwd=tmp, text=True, capture_output=True)  # a fresh process: the version applies
        if not out.exists():
            _fail_usage(f"conformance could not run: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        outcomes = json.loads(out.read_text())
    click.echo(proc.stdout.rstrip())
    findings = [o for o in outcomes if o["status"] in ("expected", "unexpected")]
    run_id = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    folder = Path(reports_dir) / run_id
    golden.write_atomic(folder / "conformance.json", json.dumps(
        {"run_id": run_id, "target": target, "environment": environment(), "outcomes": outcomes}, indent=1,
        default=str) + "\n")
    lines = [f"# conformance of {target} ({findings[0]['version'] if findings else target_version or ''})", ""]
    for f in findings:
        lines.append(f"- **{f['trainer']} / {f['fixture']} / {f['probe']}** ({f['status']}): {f['statement']}  ")
        lines.append(f"  evidence: `{json.dumps(f['evidence'], default=str)[:400]}`")
    golden.write_atomic(folder / "conformance.md", "\n".join(lines) + "\n")
    click.echo(f"report in {folder}")
    sys.exit(proc.returncode if proc.returncode in (0, 1) else 2)


@main.command("bisect")
@click.option("--repo", required=True, type=click.Path(exists=True, file_okay=False), help="The git repository.")
@click.option("--good", required=True, help="A revision where the cases pass.")
@click.option("--bad", required=True, help="A revision where they fail.")
@filter_options
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the result here (JSON).")
def bisect_command(repo, good, bad, target, trainers, fixtures, variants, steps, report_path):
    """Find the first commit at which the selected cases go from passing to failing."""
    import json

    from . import bisect as bisect_mod

    run_args = ["--target", target, "--steps", str(steps)]
    for flag, values in (("--trainer", trainers), ("--fixture", fixtures), ("--variant", variants)):
        for value in values:
            run_args += [flag, value]
    click.echo(f"harness bisect {good}..{bad} in {repo}: harness run {' '.join(run_args)}")
    try:
        result = bisect_mod.bisect(repo, good, bad, run_args)
    except RuntimeError as err:
        _fail_usage(str(err))
    text = bisect_mod.format_report(result)
    click.echo(text)
    if report_path:
        golden.write_atomic(Path(report_path), json.dumps(result, indent=1) + "\n")
    sys.exit(0 if result["first_bad"] else 1)


if __name__ == "__main__":
    main()
