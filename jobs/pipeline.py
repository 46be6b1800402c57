"""The whole pipeline: every step in order, each skipped when up to date, under one MLflow run.

``STEPS`` is the one list of the steps, in order; the runner learns the order from it (the tables a step
reads are identified by the version their latest earlier writer left), and so do the CLI and each
step's ``main``.
"""
from __future__ import annotations

import click

from jobs import dedup, detect, embed, ingest, neardup, quality, report, sample, token_counts
from jobs.common import tables
from jobs.common.config import Config, load_config
from jobs.common.errors import ConfigError
from jobs.common.runner import StepOutcome, config_options, execute, pipeline_run_id_option, run_guarded, start_spark
from jobs.common.secrets import redact_text
from jobs.common.tracking import pipeline_run, tracking_uri

STEPS = [ingest.STEP, dedup.STEP, quality.STEP, neardup.STEP, token_counts.STEP, detect.STEP, embed.STEP,
         sample.STEP, report.STEP]
STEP_NAMES = [s.name for s in STEPS]


def run_pipeline(cfg: Config, steps: list[str] | None = None, force: bool = False) -> list[StepOutcome]:
    unknown = sorted(set(steps or []) - set(STEP_NAMES))
    if unknown:
        raise ConfigError(f"unknown step(s) {unknown}; steps are: {', '.join(STEP_NAMES)}")
    spark = start_spark(cfg)
    outcomes = []
    with pipeline_run(cfg) as parent_id:
        click.echo(f"cleanwell pipeline (MLflow run {parent_id}); lake: {tables.table_ref(cfg, 'bronze').location}")
        for step in STEPS:
            if steps and step.name not in steps:
                continue
            outcomes.append(execute(step, spark, cfg, steps=STEPS, force=force))
    return outcomes


def echo_locations(cfg: Config) -> None:
    """Where a user finds the results, whether the steps ran now or earlier."""
    from jobs.common import storage
    from jobs.common.config import load_mixture
    from jobs.common.manifest import manifest_folder

    uri = redact_text(tracking_uri(cfg))
    click.echo(f"  gold table:  {tables.table_ref(cfg, 'gold')}")
    manifest = storage.join(manifest_folder(cfg), load_mixture(cfg.sample.mixture).name, "latest.json")
    click.echo(f"  manifest:    {manifest}")
    click.echo(f"  report:      {storage.join(cfg.report.dir, 'latest.html')}")
    click.echo(f"  MLflow:      mlflow ui --backend-store-uri {uri}")


@click.command(name="run", help=f"Run the pipeline ({', '.join(STEP_NAMES)}). Steps whose inputs and config "
                                "are unchanged since their last successful run are skipped.")
@config_options
@pipeline_run_id_option
@click.option("--steps", help=f"Comma-separated subset of: {','.join(STEP_NAMES)}.")
@click.option("--force", is_flag=True, help="Rerun steps even when they are up to date.")
def command(config_files: tuple[str, ...], overrides: tuple[str, ...], steps: str | None, force: bool) -> None:
    def action() -> None:
        cfg = load_config(config_files, overrides)
        chosen = [s.strip() for s in steps.split(",") if s.strip()] if steps else None
        outcomes = run_pipeline(cfg, chosen, force)
        ran = sum(o.status == "ran" for o in outcomes)
        click.echo(f"pipeline finished: {ran} step(s) ran, {len(outcomes) - ran} up to date, "
                   f"{sum(o.seconds for o in outcomes):.1f} s")
        echo_locations(cfg)

    run_guarded(action)


def main(argv: list[str] | None = None) -> None:
    command.main(args=argv, prog_name="cleanwell run")


if __name__ == "__main__":
    main()
