"""``cleanwell``: one command per job plus ``run`` (the whole pipeline) and set-up helpers."""
from __future__ import annotations

import click

from jobs import pipeline
from jobs.common.config import config_docs, load_config
from jobs.common.runner import config_options, run_guarded, step_command
from jobs.common.session import fetch_jars


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="cleanwell")
def cli() -> None:
    """cleanwell: provenance, filtering, mixing, gates and evidence for LLM training data, on Spark + Delta.

    Every command takes --config FILE (merged over conf/base.yaml) and KEY=VALUE overrides,
    e.g. `cleanwell run --config conf/demo.yaml lake.root=/tmp/lake`.
    """


cli.add_command(pipeline.command)
for _step in pipeline.STEPS:
    cli.add_command(step_command(_step))


@cli.command(name="fetch-jars")
def fetch_jars_command() -> None:
    """Fetch the Delta Lake JARs from Maven Central into ~/.m2 with mvn (once; Spark then runs offline)."""
    run_guarded(lambda: [click.echo(f"ok: {p}") for p in fetch_jars()])


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


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="cleanwell")


if __name__ == "__main__":
    main()
