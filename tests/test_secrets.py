"""Secrets stay out of evidence (#13 item 6): credential-named keys and URI passwords are redacted from
MLflow params and tags, printed config and errors, and credentials in spark.conf never reach the JVM's
command line."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from jobs.common.config import load_config
from jobs.common.errors import InputError
from jobs.common.runner import run_guarded
from jobs.common.secrets import REDACTED, is_secret_key, redact, redact_text
from jobs.common.tracking import tracked_run
from tests.conftest import PLANTED_SECRET, REPO

PLANTED = "PLANTED-s3cr3t-7f3a"


@pytest.mark.parametrize("key", ["spark.hadoop.fs.s3a.secret.key", "spark.hadoop.fs.s3a.access.key",
                                 "fs.azure.account.key.acct.blob.core.windows.net", "detect.watermark_key",
                                 "password", "db_password", "api_token", "AWS_SECRET_ACCESS_KEY", "credentials",
                                 "spark.hadoop.fs.gs.auth.service.account.private.key"])
def test_credential_keys_are_recognised(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["token_budget", "group_key", "tokenizer", "sequence_tokens", "n_tokens",
                                 "spark.sql.shuffle.partitions", "neardup.num_perm", "keys", ""])
def test_ordinary_keys_are_not_secrets(key: str) -> None:
    assert not is_secret_key(key)


def test_redaction_masks_uri_passwords_and_secret_values_and_keeps_the_shape() -> None:
    assert redact_text(f"cannot read s3://AKIA123:{PLANTED}@bucket/x and https://u:{PLANTED}@h:8/p") == \
        "cannot read s3://AKIA123:***@bucket/x and https://u:***@h:8/p"
    assert redact_text("https://host/path?a=b and /local/file:1 user@example.org") == \
        "https://host/path?a=b and /local/file:1 user@example.org"
    config = {"spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": PLANTED, "spark.ui.enabled": "false"}},
              "sources": [{"path": f"https://user:{PLANTED}@host/corpus.jsonl"}], "token_budget": 5}
    assert redact(config) == {"spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": REDACTED,
                                                 "spark.ui.enabled": "false"}},
                              "sources": [{"path": "https://user:***@host/corpus.jsonl"}], "token_budget": 5}


def test_params_and_tags_reach_mlflow_without_the_secret(tmp_path: Path) -> None:
    cfg = load_config([], [f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", f"tracking.artifact_root={tmp_path / 'a'}",
                           f"spark.conf.spark.hadoop.fs.s3a.secret.key={PLANTED}"])
    with tracked_run(cfg, "secrets", params={"spark": cfg.spark.model_dump(mode="json"),
                                             "source": f"s3://key:{PLANTED}@bucket/shards"}) as log:
        log.tags({"origin_uri": f"https://u:{PLANTED}@host/x", "api_token": PLANTED})
        run_id = log.run_id
    run = mlflow.MlflowClient().get_run(run_id)
    everything = json.dumps([run.data.params, run.data.tags])
    assert PLANTED not in everything
    assert run.data.params["spark.conf.spark.hadoop.fs.s3a.secret.key"] == REDACTED
    assert run.data.params["source"] == "s3://key:***@bucket/shards"
    assert run.data.tags["api_token"] == REDACTED


def test_printed_config_and_errors_do_not_show_the_secret(capsys) -> None:
    result = CliRunner().invoke(cli, ["config", f"spark.conf.spark.hadoop.fs.s3a.secret.key={PLANTED}",
                                      f"detect.watermark_key={PLANTED}"])
    assert result.exit_code == 0 and PLANTED not in result.output and "secret.key: '***'" in result.output

    def fails():
        raise InputError(f"source not found: s3://AKIA:{PLANTED}@bucket/corpus")

    with pytest.raises(SystemExit):
        run_guarded(fails)
    assert "s3://AKIA:***@bucket/corpus" in capsys.readouterr().err


@pytest.mark.slow  # a fresh JVM (~7 s); CI runs it
def test_spark_conf_credentials_are_not_on_the_jvm_command_line(tmp_path: Path) -> None:
    """A fresh local session: the planted secret is in the Hadoop configuration the file systems read, and
    in no process's command line while the JVM runs; an ordinary setting is (so the scan can see)."""
    probe = textwrap.dedent(f"""
        import json, os
        from jobs.common.config import load_config
        from jobs.common.session import get_spark
        cfg = load_config([], ["lake.root={tmp_path / 'lake'}", "spark.conf.spark.hadoop.fs.s3a.secret.key={PLANTED}",
                               "spark.conf.spark.cleanwell.probe=visible-7f3a"])
        spark = get_spark(cfg)
        hadoop = spark.sparkContext._jsc.hadoopConfiguration().get("fs.s3a.secret.key")
        lines = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    raw = open(f"/proc/{{pid}}/cmdline", "rb").read()
                    lines.append(raw.replace(b"\\0", b" ").decode(errors="replace"))
                except OSError:
                    pass
        print("PROBE" + json.dumps({{"hadoop": hadoop, "secret_on_cmdline": any("{PLANTED}" in l for l in lines),
                                    "ordinary_on_cmdline": any("visible-7f3a" in l for l in lines)}}))
        spark.stop()
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    (tmp_path / "probe.py").write_text(probe)  # not `-c`: the probe's own command line would hold the secret
    proc = subprocess.run([sys.executable, "probe.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.split("PROBE", 1)[1].splitlines()[0])
    assert seen == {"hadoop": PLANTED, "secret_on_cmdline": False, "ordinary_on_cmdline": True}


@pytest.mark.spark
def test_no_file_a_whole_demo_run_writes_holds_a_configured_secret(demo) -> None:
    """Every file under the demo run's root: Delta logs (commit info) and data files of every table,
    manifests, the report, the MLflow sqlite store and its artifacts (config params, summaries, models)."""
    cfg, root, _ = demo
    assert cfg.spark.conf["spark.hadoop.fs.s3a.secret.key"] == PLANTED_SECRET  # the run had it configured
    files = [path for path in root.rglob("*") if path.is_file()]
    kinds = {path.suffix for path in files}
    assert {".json", ".parquet", ".html", ".db"} <= kinds, kinds  # the scan covers every kind of evidence
    leaks = [str(path.relative_to(root)) for path in files if PLANTED_SECRET.encode() in path.read_bytes()]
    if report := os.environ.get("CLEANWELL_SECRET_SCAN_REPORT"):  # bench.reliability records the scan
        Path(report).write_text(json.dumps({"files_scanned": len(files), "secrets_found": len(leaks),
                                            "files_with_secret": leaks}))
    assert leaks == []
