"""The command line: help for every command, errors as messages (no traceback), exit codes."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from jobs.pipeline import STEP_NAMES


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
