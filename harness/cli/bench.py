"""``harness bench``: step times, the lower bound beside them, and the speed gates."""

import json
import os
import sys
from pathlib import Path

import click
from tabulate import tabulate

from ...fixtures import FIXTURES
from ...fixtures.bench import BENCH_FIXTURES, COMPLETION_TOKENS, MAX_LENGTH
from ..env import environment
from ..judge.golden import write_atomic
from ..model import TRAINERS, VARIANTS, build_matrix
from ..tools import abtest, gate
from ..tools import bench as bench_mod
from ..tools.baseline import BaselineError, baseline_side
from .common import check_names, fail_usage, main, project_config, resolve_target

DEFAULTS = bench_mod.Rounds()


def bench_cases(target_obj, trainers, fixtures, variants):
    check_names("trainer", trainers, [t for t in TRAINERS if t in target_obj.trainers()])
    check_names("fixture", fixtures, list(FIXTURES) + list(BENCH_FIXTURES))
    check_names("variant", variants, list(VARIANTS))
    cases = build_matrix(target_obj, trainers, fixtures, variants, scenarios=("plain",))
    for case in cases:
        if case.fixture in BENCH_FIXTURES:  # a user's step: sequences of about MAX_LENGTH tokens
            case.settings.max_length = 2 * MAX_LENGTH
            if case.trainer == "grpo":
                case.settings.extra["max_completion_length"] = COMPLETION_TOKENS
    return cases


def selected_cases(targets, trainers, fixtures, variants):
    """``[(loaded target, its cases)]``; what the command line leaves out comes from the project's table
    (its target, else reference; its trainers, fixtures and variants, else bench's defaults)."""
    config = project_config()
    trainers, fixtures, variants = trainers or config.trainers, fixtures or config.fixtures, variants or config.variants
    return [(t, bench_cases(t, trainers, fixtures, variants))
            for t in map(resolve_target, dict.fromkeys(targets or (None,)))]


def _by_key(cases):
    """Cases in matrix order, keyed so that targets line up (a target lacking a trainer gets None)."""
    index = {(c.trainer, c.fixture, c.variant): c for c in cases}
    return [index.get((t, f, v)) for t in TRAINERS for f in FIXTURES + BENCH_FIXTURES for v in VARIANTS]


def side_by_side(results, names):
    table = {}
    for r in results:
        table.setdefault((r["trainer"], r["fixture"], r["variant"]), {})[r["target"]] = r.get("median_ms")
    rows = [[tr, fx, v] + [("error" if row[n] is None else f"{row[n]:.1f}") if n in row else "-" for n in names]
            for (tr, fx, v), row in table.items()]
    return tabulate(rows, headers=["trainer", "fixture", "variant"] + [f"{n} ms/step" for n in names])


def _table(results):
    rows = [[c["id"], f"{c['median_ms']:.1f}", f"{c['p90_ms']:.1f}", f"{c['iqr_ms']:.1f}", len(c["step_ms"]),
             f"{c['tokens_per_s']:.0f}", f"{c['peak_memory_mb']:.0f}", f"{c['warmup_s']:.2f}",
             f"{c['lower_bound_ms']:.1f}", f"{c['ratio']:.2f}"]
            if "error" not in c else [c["id"], "error"] + [""] * 8 for c in results]
    return tabulate(rows, headers=["case", "median ms", "p90 ms", "IQR ms", "steps", "tokens/s", "peak MB",
                                   "warm-up s", "lower bound ms", "ratio"])


def _ab_table(results):
    rows = []
    for c in results:
        if "error" in c:
            rows.append([c["id"], "", "", "error", c["error"][:120]])
            continue
        v = c["verdict"]
        rows.append([c["id"], f"{c['baseline']['median_ms']:.1f}", f"{c['median_ms']:.1f}", v["status"],
                     f"{v['detail']}; {len(c['step_ms'])} rounds; ratio {c['baseline']['ratio']:.2f} -> "
                     f"{c['ratio']:.2f}"])
    return tabulate(rows, headers=["case", "baseline ms", "candidate ms", "gate", "detail"])


@main.command("bench")
@click.option("--target", multiple=True,
              help="Target name (entry point) or import spec; repeat to compare targets side by side.  "
                   "[default: the project's, else reference]")
@click.option("--trainer", "trainers", multiple=True, help="Trainer(s).  [default: the project's, else all]")
@click.option("--fixture", "fixtures", multiple=True,
              help=f"Fixture(s). Bench size (about 0.5B parameters, generated at run time): "
                   f"{', '.join(BENCH_FIXTURES)}.  [default: the project's, else the tiny ones]")
@click.option("--variant", "variants", multiple=True, help="Variant(s).  [default: the project's, else fp32]")
@click.option("--warmup", default=DEFAULTS.warmup, show_default=True, type=click.IntRange(0, 100),
              help="Untimed steps first.")
@click.option("--min-time", default=DEFAULTS.min_time, show_default=True, type=click.FloatRange(0, 3600),
              help="Seconds of timed steps per case (both sides together under --against).")
@click.option("--min-rounds", default=DEFAULTS.min_rounds, show_default=True, type=click.IntRange(1, 10000),
              help="Timed steps per case at least.")
@click.option("--max-rounds", default=DEFAULTS.max_rounds, show_default=True, type=click.IntRange(1, 10000),
              help="Timed steps per case at most.")
@click.option("--timer", type=click.Choice(bench_mod.TIMERS), default="auto", show_default=True,
              help="The clock steps are judged by; auto: this process's CPU time on the CPU backend (load on "
                   "the machine stretches wall time, not the work), wall time on a GPU.")
@click.option("--against", metavar="REV",
              help="A/B gate: the same cases on a baseline (a git revision of the target's repository, a "
                   "release of its library, or a folder with an install of it), steps interleaved in one run; "
                   "fail (exit 1) on a real slowdown of the median step time.")
@click.option("--repo", type=click.Path(exists=True, file_okay=False),
              help="The target's git repository for --against.  [default: the one holding the target]")
@click.option("--compare", "baseline_path", type=click.Path(exists=True, dir_okay=False),
              help="Gate against a --json file of an earlier run (step/lower-bound ratios; weaker than "
                   "--against on a noisy machine).")
@click.option("--threshold", default=10.0, show_default=True, type=click.FloatRange(0, 1000, min_open=True),
              help="Slowdown (percent) that fails.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results here.")
def bench_command(target, trainers, fixtures, variants, warmup, min_time, min_rounds, max_rounds, timer, against,
                  repo, baseline_path, threshold, json_path):
    """Benchmark step time per case against a lower bound; gate on slowdowns with --against or --compare.

    Each case is timed for --min-time seconds (at least --min-rounds steps), as pytest-benchmark times its
    rounds.  The gate fails a case when the 95% bootstrap interval of its slowdown lies above 0 and reaches
    --threshold.

    Power at the defaults (--against, measured on a busy 2-core CPU, DPO on tiny-llama, 60 trials each,
    tests/bench/measure_gate.py): a planted 10% slowdown of the trainer was flagged 59/60 times, identical
    code 0/60.
    """
    if max_rounds < min_rounds:
        fail_usage(f"--max-rounds {max_rounds} is below --min-rounds {min_rounds}")
    if against and baseline_path:
        fail_usage("--against and --compare are two gates: give one")
    if against and len(target) > 1:
        fail_usage("--against compares one target with its baseline: give one --target")
    baseline = None
    if baseline_path:
        try:
            baseline = json.loads(Path(baseline_path).read_text())
            gate.check_baseline(baseline, f"--compare {baseline_path}")
        except (ValueError, UnicodeDecodeError) as err:
            fail_usage(str(err) if isinstance(err, gate.GateError)
                       else f"--compare {baseline_path}: not a harness bench JSON ({err})")
    rounds = bench_mod.Rounds(warmup, min_rounds, min_time, max_rounds, timer=timer).resolved()
    selected = selected_cases(target, trainers, fixtures, variants)
    env = environment()
    if against:
        target_obj, cases = selected[0]
        _ab(target_obj, cases, against, repo, rounds, threshold, json_path, env)
    names = [target_obj.name for target_obj, _ in selected]
    # Side by side: each trainer x fixture x variant runs on every target before the next.
    cases = [c for group in zip(*[_by_key(cs) for _, cs in selected]) for c in group if c is not None]
    click.echo(f"harness bench: {len(cases)} case(s), {warmup} warm-up steps, then {min_time:g} s ({rounds.timer} "
               f"time) and at least {min_rounds} steps each; {env['backend']} ({env['device']})")

    def progress(result, done, total):
        if "error" in result:
            click.echo(f"[{done}/{total}] {result['id']}: error: {result['error']}")
        else:
            click.echo(f"[{done}/{total}] {result['id']}: {result['median_ms']:.1f} ms/step over "
                       f"{len(result['step_ms'])} steps, ratio {result['ratio']:.2f}")

    results = bench_mod.bench(cases, rounds, on_result=progress)
    click.echo(_table(results["cases"]))
    if len(names) > 1:
        click.echo()
        click.echo(side_by_side(results["cases"], names))
    if json_path:
        write_atomic(Path(json_path), json.dumps(results, indent=1) + "\n")
    if baseline is None:
        sys.exit(0)
    try:
        verdicts = gate.compare(baseline, results, threshold, source=f"--compare {baseline_path}")
    except gate.GateError as err:
        fail_usage(str(err))
    click.echo()
    click.echo(tabulate([[v["id"], v["status"], v["detail"]] for v in verdicts], headers=["case", "gate", "detail"]))
    skipped = [v for v in verdicts if v["status"] == "not compared"]
    click.echo(f"{len(verdicts) - len(skipped)} of {len(verdicts)} case(s) compared"
               + (f"; not compared (not in the baseline): {', '.join(v['id'] for v in skipped)}" if skipped else ""))
    sys.exit(gate.exit_code(verdicts))


def _ab(target_obj, cases, against, repo, rounds, threshold, json_path, env):
    candidate_env = dict(os.environ)
    try:
        with baseline_side(against, target_obj, repo) as (baseline_env, spec, what):
            click.echo(f"harness bench --against {against}: {len(cases)} case(s); baseline: {what}; "
                       f"{rounds.warmup} warm-up steps, then alternate steps for {rounds.min_time:g} s of {rounds.timer} time (at least "
                       f"{rounds.min_rounds} rounds); {env['backend']} ({env['device']})")
            results = []
            for i, case in enumerate(cases, 1):
                try:
                    result = abtest.ab_case(case, rounds, baseline_env, candidate_env, threshold, baseline_spec=spec)
                    v = result["verdict"]
                    click.echo(f"[{i}/{len(cases)}] {case.id}: {v['status']}: {v['detail']}")
                except abtest.SideError as err:
                    result = bench_mod.error_result(case, err)
                    click.echo(f"[{i}/{len(cases)}] {case.id}: error: {err}")
                results.append(result)
    except BaselineError as err:
        fail_usage(str(err))
    click.echo(_ab_table(results))
    if json_path:
        write_atomic(Path(json_path), json.dumps({"kind": "harness-bench-ab", "against": against,
                                                  "environment": env, "cases": results}, indent=1) + "\n")
    sys.exit(gate.exit_code([r.get("verdict", {"status": "error"}) for r in results]))
