"""The command line: help for every command, errors as messages (no traceback), exit codes."""
from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from jobs import detect, embed, ingest, sample
from jobs.cli import cli
from jobs.common.runner import upstream_writers
from jobs.pipeline import STEP_NAMES, STEPS
from tests.conftest import REPO


@pytest.mark.parametrize("command", ["run", "fetch-jars", "config", *STEP_NAMES])
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert f"Usage: cli {command}" in result.output or "Usage:" in result.output
    if command in STEP_NAMES or command == "run":
        assert "--config" in result.output and "--force" in result.output


def test_config_error_is_a_message_and_exit_2():
    result = CliRunner().invoke(cli, ["config", "ingest.max_txt_bytes=5"])
    assert result.exit_code == 2
    assert "conf key `ingest.max_txt_bytes`" in result.output
    assert "Traceback" not in result.output


def test_unknown_step_is_rejected_before_spark_starts():
    result = CliRunner().invoke(cli, ["run", "--steps", "ingest,nosuch"])
    assert result.exit_code == 2
    assert "unknown step(s) ['nosuch']" in result.output


def test_config_prints_resolved_yaml():
    result = CliRunner().invoke(cli, ["config", "--config", "conf/demo.yaml", "lake.root=/x"])
    assert result.exit_code == 0
    assert "root: /x" in result.output and "name: wikihow" in result.output


def test_a_step_reads_the_tables_its_predecessors_in_the_pipeline_wrote():
    silver_writers = ["dedup", "quality", "neardup", "tokenize", "detect", "embed"]
    assert upstream_writers(STEPS, ingest.STEP, "bronze") == []
    assert upstream_writers(STEPS, detect.STEP, "silver") == silver_writers[:4]
    assert upstream_writers(STEPS, embed.STEP, "silver") == silver_writers[:5]
    assert upstream_writers(STEPS, sample.STEP, "silver") == silver_writers


@pytest.mark.parametrize("module", ["jobs.token_counts", "jobs.quality"])
def test_a_step_module_runs_as_its_cleanwell_command(module):
    """`python -m jobs.<step>`: the step's main learns the pipeline order from the registry."""
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    step = {"jobs.token_counts": "tokenize", "jobs.quality": "quality"}[module]
    assert result.stdout.startswith(f"Usage: cleanwell {step} [OPTIONS]")
