"""``cleanwell``: one command per job plus ``run`` (the whole pipeline) and set-up helpers."""
from __future__ import annotations

import click

from jobs import pipeline
from jobs.common.config import config_docs, load_config
from jobs.common.runner import config_options, run_guarded, step_command
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
        click.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    run_guarded(action)


@cli.command(name="train-detector")
@config_options
def train_detector_command(config_files: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Train the synthetic-text detector from detect.training_files and register it in MLflow (no Spark).

    The pipeline's detect step does the same with the lake's declared-origin documents added.
    """
    from jobs.detect import train_standalone

    run_guarded(lambda: click.echo(f"registered: {train_standalone(load_config(config_files, overrides))}"))


@cli.command(name="eval-detector")
@config_options
@click.option("--input", "inputs", multiple=True, required=True, metavar="PATH",
              help="M4-format JSONL (`human_text`, `machine_text` per line), local or a URI such as s3://…; "
                   "repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def eval_detector_command(config_files: tuple[str, ...], overrides: tuple[str, ...], inputs: tuple[str, ...],
                          as_json: bool) -> None:
    """Measure the registered detector on labelled files: AUROC and TPR at 1 % and 5 % FPR per detector.

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
        click.echo(f"{result['model']}: {result['n_human']} human, {result['n_machine']} machine texts "
                   f"({result['excluded_training_texts']} training texts left out)")
        click.echo(f"{'detector':<24}{'AUROC':>8}{'TPR@1%':>9}{'TPR@5%':>9}")
        for name, metrics in result.items():
            if isinstance(metrics, dict):
                click.echo(f"{name:<24}{metrics['auroc']:>8.3f}{metrics['tpr_at_fpr_1pct']:>9.3f}"
                           f"{metrics['tpr_at_fpr_5pct']:>9.3f}")

    run_guarded(action)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="cleanwell")


if __name__ == "__main__":
    main()
