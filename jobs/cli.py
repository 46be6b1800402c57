"""``cleanwell``: one command per job plus ``run`` (the whole pipeline) and set-up helpers."""
from __future__ import annotations

import click

from jobs import pipeline
from jobs.common.config import config_docs, load_config
from jobs.common.runner import config_options, run_guarded, step_command
from jobs.common.secrets import redact
from jobs.common.session import ALWAYS, JAR_SETS, fetch_jars


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="cleanwell")
def cli() -> None:
    """cleanwell: provenance, filtering, mixing, gates and evidence for LLM training data, on Spark + Delta.

    Every command takes --config FILE (merged over conf/base.yaml) and KEY=VALUE overrides,
    e.g. `cleanwell run --config conf/demo.yaml lake.root=/tmp/lake`.
    """


cli.add_command(pipeline.command)
for _step in pipeline.STEPS:
    cli.add_command(step_command(_step, pipeline.STEPS))


@cli.command(name="fetch-jars")
@click.option("--with", "jar_sets", multiple=True, type=click.Choice([s for s in JAR_SETS if s not in ALWAYS]),
              help="Also fetch this JAR set (repeatable): s3 = Hadoop S3A + AWS SDK v2 modules, for s3:// and "
                   "s3a:// paths; sessions load it when `spark.jar_sets` names it.")
def fetch_jars_command(jar_sets: tuple[str, ...]) -> None:
    """Fetch the Delta Lake JARs (and --with sets) from Maven Central into ~/.m2 with mvn (once; Spark then
    runs offline)."""
    run_guarded(lambda: [click.echo(f"ok: {p}") for p in fetch_jars(jar_sets)])


@cli.command(name="config")
@config_options
@click.option("--docs", is_flag=True, help="Print the Markdown reference of every config key instead.")
def config_command(config_files: tuple[str, ...], overrides: tuple[str, ...], docs: bool) -> None:
    """Validate and print the resolved configuration (YAML)."""
    import yaml

    def action() -> None:
        if docs:
            click.echo(config_docs())
            return
        cfg = load_config(config_files, overrides)
        click.echo(yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False))

    run_guarded(action)


@cli.command(name="train-detector")
@config_options
def train_detector_command(config_files: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Train the synthetic-text detector from detect.training_files and register it in MLflow (no Spark).

    The pipeline's detect step does the same with the lake's declared-origin documents added.
    """
    from jobs.detect import train_standalone

    run_guarded(lambda: click.echo(f"registered: {train_standalone(load_config(config_files, overrides))}"))


@cli.command(name="collapse-lab")
@config_options
@click.option("--generations", type=click.IntRange(1, 100), default=None,
              help="Generations after generation 0 (default: collapse_lab.generations, 10).")
@click.option("--engine", type=click.Choice(["numpy", "spark"]), default=None,
              help="Curated regimes' curation: numpy (one process, the steps' functions; default) or spark (the "
                   "pipeline's steps on a Delta lake per regime and temperature, every generation).")
def collapse_lab_command(config_files: tuple[str, ...], overrides: tuple[str, ...], generations: int | None,
                         engine: str | None) -> None:
    """Train a small n-gram model on human text, retrain it generation after generation on its own samples
    under each regime (replace, accumulate, curated, curated_feedback) and temperature, and measure what
    cleanwell's guardrails change: held-out perplexity, tail coverage, distinct-n, vocabulary, unigram KL,
    synthetic share, detector AUROC (docs/collapse_lab.md). One MLflow run; figures, report.html and
    results.json in collapse_lab.output_dir. With --engine spark, each generation's curation is a run of
    the pipeline's steps on Delta tables (their lakes in <output_dir>/spark/).
    """
    from jobs.collapse_lab import main as collapse_lab

    def action() -> None:
        extra = (() if generations is None else (f"collapse_lab.generations={generations}",)) \
            + (() if engine is None else (f"collapse_lab.engine={engine}",))
        cfg = load_config(config_files, (*overrides, *extra))
        results = collapse_lab(cfg, progress=lambda line: click.echo(line, err=True))
        click.echo(f"collapse lab: {len(results['series'])} runs x {results['generations']} generations in "
                   f"{results['seconds']} s; outputs in {cfg.collapse_lab.output_dir} (report.html); "
                   f"MLflow run {results['mlflow_run_id']}")

    run_guarded(action)


@cli.command(name="eval-detector")
@config_options
@click.option("--input", "inputs", multiple=True, required=True, metavar="PATH",
              help="M4-format JSONL (`human_text`, `machine_text` per line), local or a URI such as s3://…; "
                   "repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def eval_detector_command(config_files: tuple[str, ...], overrides: tuple[str, ...], inputs: tuple[str, ...],
                          as_json: bool) -> None:
    """Measure the registered detector on labelled files: AUROC and TPR at 1 % and 5 % FPR per detector,
    the combination's calibration (ECE, Brier), overall, per domain and per generator; warns where the
    combination does worse than its best single input.

    Never trains on the inputs: texts the detector was trained on are left out and counted. Trains the
    detector first (as train-detector) when none is registered.
    """
    import json

    from jobs.detect import evaluate_files

    def action() -> None:
        result = evaluate_files(load_config(config_files, overrides), list(inputs))
        if as_json:
            click.echo(json.dumps(result))
            return
        click.echo(format_evaluation(result))

    run_guarded(action)


def format_evaluation(result: dict) -> str:
    """The table of ``cleanwell eval-detector``: every detector overall, then the combination and its best
    input per domain and per generator, then one warning line wherever the combination is worse."""
    from udfs.classifier import SCORE_COLUMNS

    combined = result["synthetic_probability"]
    lines = [f"{result['model']}: {result['n_human']} human, {result['n_machine']} machine texts "
             f"({result['excluded_training_texts']} training texts left out)",
             f"{'detector':<24}{'AUROC':>8}{'TPR@1%':>9}{'TPR@5%':>9}"]
    lines += [f"{name:<24}{result[name]['auroc']:>8.3f}{result[name]['tpr_at_fpr_1pct']:>9.3f}"
              f"{result[name]['tpr_at_fpr_5pct']:>9.3f}" for name in SCORE_COLUMNS]
    lines.append(f"synthetic_probability: ECE {combined['ece']:.3f}, Brier {combined['brier']:.3f}; "
                 f"best single input: {result['best_input']}")
    scopes = [("overall", result)]
    for group, title in (("by_domain", "domain"), ("by_generator", "generator (vs all human texts)")):
        reports = result[group]
        if not reports:
            continue
        width = max(len(title), *map(len, reports)) + 2
        lines += ["", f"{title:<{width}}{'human':>7}{'machine':>8}{'combined AUROC':>16}{'TPR@1%':>8}   "
                      f"{'best input':<20}{'AUROC':>7}{'TPR@1%':>8}"]
        for name, report in reports.items():
            best = report[report["best_input"]]
            lines.append(f"{name:<{width}}{report['n_human']:>7}{report['n_machine']:>8}"
                         f"{report['synthetic_probability']['auroc']:>16.3f}"
                         f"{report['synthetic_probability']['tpr_at_fpr_1pct']:>8.3f}   "
                         f"{report['best_input']:<20}{best['auroc']:>7.3f}{best['tpr_at_fpr_1pct']:>8.3f}")
            scopes.append((f"{title.split()[0]} {name}", report))
    notes = [f"domain {domain} not evaluated: {counts['n_human']} human, {counts['n_machine']} machine texts "
             "(needs both)" for domain, counts in result["domains_not_evaluated"].items()]
    notes += [f"WARNING: synthetic_probability is worse than its best input {report['best_input']} ({scope}): "
              f"AUROC {report['synthetic_probability']['auroc']:.3f} < {report[report['best_input']]['auroc']:.3f}"
              for scope, report in scopes if report["combination_worse_than_best_input"]]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="cleanwell")


if __name__ == "__main__":
    main()
