"""Object storage: Delta tables, files and the whole pipeline on a real S3-compatible server (moto).

Spark runs in a subprocess with its own session (the s3 JAR set and S3A settings): the shared test
session is never restarted. One ``s3://`` URI serves Spark (S3A) and fsspec (s3fs) alike.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from jobs.common import storage
from jobs.common.config import DetectConfig, SparkConfig, load_config
from jobs.common.errors import ConfigError, SetupError
from jobs.common.session import JAR_SETS, delta_jar_paths, local_conf, local_jars
from tests.conftest import REPO

# A Delta table written with s3:// and read back with s3a:// (the same objects), through get_spark.
SPARK_ROUND_TRIP = """
import json, sys
from jobs.common.config import load_config
from jobs.common.session import get_spark

table, *overrides = sys.argv[1:]
spark = get_spark(load_config([], overrides))
schema = "id long, text string"
spark.createDataFrame([(i, f"document {i}") for i in range(6)], schema).write.format("delta").save(table)
spark.createDataFrame([(6, "document 6")], schema).write.format("delta").mode("append").save(table)
same_objects = "s3a://" + table.removeprefix("s3://")
history = spark.sql(f"DESCRIBE HISTORY delta.`{same_objects}`").collect()
print(json.dumps({"ids": sorted(r.id for r in spark.read.format("delta").load(same_objects).collect()),
                  "versions": sorted(r.version for r in history)}))
"""


def subprocess_env(s3_server) -> dict[str, str]:
    """This environment plus the object store's, without the test session's Spark gateway."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    return {**env, **s3_server.env, "SPARK_LOCAL_IP": "127.0.0.1"}


def test_jar_set_names_are_the_config_choices():
    (choice,) = typing.get_args(SparkConfig.model_fields["jar_sets"].annotation)
    assert set(typing.get_args(choice)) == set(JAR_SETS)


def test_unknown_jar_set_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="spark.jar_sets"):
        load_config(overrides=["spark.jar_sets=[gcs]"])


def test_fetch_jars_rejects_an_unknown_set():
    from jobs.cli import cli

    result = CliRunner().invoke(cli, ["fetch-jars", "--with", "gcs"])
    assert result.exit_code == 2
    assert "'s3'" in result.output


def test_s3_set_maps_s3_uris_to_s3a_and_spark_conf_wins():
    cfg = load_config(overrides=["spark.jar_sets=[s3]", "spark.conf.spark.hadoop.fs.s3a.path.style.access=true",
                                 "spark.conf.spark.sql.extensions=x.Custom"])
    conf = local_conf(cfg)
    assert conf["spark.hadoop.fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.sql.extensions"] == "x.Custom"
    assert "spark.hadoop.fs.s3.impl" not in local_conf(load_config())
    assert local_conf(load_config(overrides=["lake.root=s3://b/lake"]))["spark.sql.warehouse.dir"] == \
        "s3://b/lake/_warehouse"


def test_session_jars_add_the_s3_set_after_delta():
    jars = local_jars(load_config(overrides=["spark.jar_sets=[s3]"]))
    names = [j.name for j in jars]
    assert names[:2] == [p.name for p in delta_jar_paths()]
    assert "hadoop-aws-3.4.2.jar" in names and "s3-2.29.52.jar" in names
    assert len(names) == len(set(names)) == 2 + len(JAR_SETS["s3"].artifacts)
    assert all(j.is_file() for j in jars)


def test_missing_s3_jars_name_the_command_that_fetches_them(tmp_path, monkeypatch):
    cfg = load_config(overrides=[f"spark.jars=[{delta_jar_paths()[0]}]", "spark.jar_sets=[s3]"])
    monkeypatch.setenv("CLEANWELL_M2_REPO", str(tmp_path))  # an empty Maven repository
    with pytest.raises(SetupError, match=r"cleanwell fetch-jars --with s3"):
        local_jars(cfg)


def test_delta_and_files_round_trip_through_the_object_store(s3_server, tmp_path, monkeypatch):
    table = s3_server.url("tables/documents")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    overrides = ["spark.master=local[2]", "spark.conf.spark.sql.shuffle.partitions=2",
                 f"lake.root={s3_server.url('fast-lake')}", *s3_server.cleanwell_overrides]
    proc = subprocess.run([sys.executable, "-c", SPARK_ROUND_TRIP, table, *overrides], cwd=cwd,
                          env=subprocess_env(s3_server), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"ids": list(range(7)), "versions": [0, 1]}
    assert list(cwd.iterdir()) == []

    fs = s3_server.filesystem()
    commits = sorted(fs.glob(f"{s3_server.bucket}/tables/documents/_delta_log/*.json"))
    assert [Path(c).name for c in commits] == ["00000000000000000000.json", "00000000000000000001.json"]
    assert len(fs.glob(f"{s3_server.bucket}/tables/documents/*.parquet")) >= 2

    # The storage layer (fsspec) reads what Spark wrote and writes where Spark can read, by the same URI.
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    actions = [json.loads(line) for line in storage.read_text(storage.join(table, "_delta_log",
                                                                           "00000000000000000001.json")).splitlines()]
    added = [a["add"] for a in actions if "add" in a]
    assert sum(json.loads(a["stats"])["numRecords"] for a in added) == 1
    note = storage.join(s3_server.url("notes"), "a.txt")
    assert note == s3_server.url("notes/a.txt")
    storage.write_text(note, "héllo\n")
    assert storage.exists(note) and not storage.exists(s3_server.url("notes/b.txt"))
    assert storage.read_text(note) == "héllo\n"
    assert fs.cat(f"{s3_server.bucket}/notes/a.txt") == "héllo\n".encode()


def upload_demo(s3_server) -> str:
    """The demo (config, mixture, suites, sources, detector training files) on the bucket, every path in it
    an s3:// URI; the config's URI."""
    fs = s3_server.filesystem()
    for folder in ("data/demo/sources", "data/m4", "conf/expectations"):
        for local in sorted((REPO / folder).rglob("*")):
            if local.is_file():
                fs.put_file(str(local), f"{s3_server.bucket}/{local.relative_to(REPO).as_posix()}")
    mixture = yaml.safe_load((REPO / "conf/mixtures/demo.yaml").read_text(encoding="utf-8"))
    mixture["export"]["dir"] = s3_server.url("exports")
    fs.pipe_file(f"{s3_server.bucket}/conf/mixtures/demo.yaml", yaml.safe_dump(mixture).encode())
    demo = yaml.safe_load((REPO / "conf/demo.yaml").read_text(encoding="utf-8"))
    for source in demo["ingest"]["sources"]:
        source["path"] = s3_server.url(source["path"])
    demo["sample"]["mixture"] = s3_server.url("conf/mixtures/demo.yaml")
    demo["detect"] = {"training_files": [s3_server.url(f) for f in DetectConfig().training_files]}
    demo["gates"] = {"suites_dir": s3_server.url("conf/expectations")}
    fs.pipe_file(f"{s3_server.bucket}/conf/demo.yaml", yaml.safe_dump(demo).encode())
    return s3_server.url("conf/demo.yaml")


@pytest.mark.slow
def test_demo_pipeline_runs_with_config_inputs_and_outputs_on_the_object_store(s3_server, tmp_path):
    config = upload_demo(s3_server)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    url = s3_server.url
    cmd = [str(Path(sys.executable).parent / "cleanwell"), "run", "--config", config,
           f"lake.root={url('lake')}", f"sample.manifest_dir={url('manifests')}", f"report.dir={url('reports')}",
           f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"tracking.artifact_root={tmp_path / 'mlartifacts'}",
           "spark.conf.spark.sql.shuffle.partitions=4", *s3_server.cleanwell_overrides]
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(s3_server), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    fs, bucket = s3_server.filesystem(), s3_server.bucket
    assert fs.glob(f"{bucket}/lake/gold_mixture/_delta_log/*.json")
    manifest = json.loads(fs.cat(f"{bucket}/manifests/demo/latest.json"))
    assert manifest["documents"] > 0
    assert manifest["inputs"]["silver"]["location"].startswith(url("lake"))
    assert json.loads(fs.cat(f"{bucket}/manifests/demo/{manifest['run_id']}.json")) == manifest
    assert b"</html>" in fs.cat(f"{bucket}/reports/latest.html")
    assert fs.glob(f"{bucket}/reports/report-*.html")
    assert manifest["export"] == url("exports/demo", manifest["run_id"])
    shards = fs.glob(f"{bucket}/exports/demo/{manifest['run_id']}/part-*.json")
    assert 1 <= len(shards) <= manifest["mixture_config"]["export"]["shards"]
    rows = [json.loads(line) for shard in shards for line in fs.cat(shard).decode().splitlines()]
    assert len(rows) == manifest["rows"]
    assert len({r["doc_id"] for r in rows}) == manifest["documents"]
    assert list(cwd.iterdir()) == []
