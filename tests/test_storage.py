"""The one filesystem layer: URIs stay URIs, bundled conf/ works without a checkout, a wheel finds its
defaults (the spark-submit --py-files case)."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from jobs.common import storage
from jobs.common.config import load_config, load_mixture
from jobs.common.errors import ConfigError
from tests.conftest import REPO


def test_join_keeps_a_uri_scheme_and_its_double_slash():
    assert storage.join("s3://bucket/lake", "manifests", "demo.json") == "s3://bucket/lake/manifests/demo.json"
    assert storage.join("abfss://c@acct.dfs.core.windows.net/x", "y") == "abfss://c@acct.dfs.core.windows.net/x/y"
    assert storage.join("dbfs:/lake", "r.html") == "dbfs:/lake/r.html"
    assert storage.join("reports", "r.html") == str(Path("reports") / "r.html")


def test_file_uri_round_trip_creates_parent_folders(tmp_path):
    uri = (tmp_path / "a" / "b" / "manifest.json").as_uri()
    storage.write_text(uri, '{"x": 1}')
    assert storage.exists(uri) and storage.is_file(uri)
    assert json.loads(storage.read_text(uri)) == {"x": 1}
    assert (tmp_path / "a" / "b" / "manifest.json").read_text() == '{"x": 1}'


def test_missing_file_raises_with_the_path_as_typed(tmp_path):
    uri = (tmp_path / "absent.yaml").as_uri()
    with pytest.raises(FileNotFoundError, match="absent.yaml"):
        storage.read_text(uri)
    with pytest.raises(ConfigError, match=f"config file not found: {uri}"):
        load_config([uri])


def test_config_and_mixture_from_file_uris(tmp_path):
    mixture = yaml.safe_load((REPO / "conf" / "mixtures" / "demo.yaml").read_text())
    mixture["name"] = "from_uri"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(mixture))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"sample": {"mixture": (tmp_path / "m.yaml").as_uri()}}))
    cfg = load_config([(tmp_path / "c.yaml").as_uri()])
    assert load_mixture(cfg.sample.mixture).name == "from_uri"


def test_bundled_conf_is_used_only_where_the_working_directory_has_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bundled = storage.read_text("conf/mixtures/demo.yaml")
    assert bundled == (REPO / "conf" / "mixtures" / "demo.yaml").read_text()
    (tmp_path / "conf" / "mixtures").mkdir(parents=True)
    (tmp_path / "conf" / "mixtures" / "demo.yaml").write_text("name: mine\n")
    assert storage.read_text("conf/mixtures/demo.yaml") == "name: mine\n"
    assert storage.bundled("data/m4/x.jsonl") is None and storage.bundled("/conf/base.yaml") is None


def test_base_defaults_come_from_the_package_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "base.yaml").write_text("lake: {root: /somewhere/else}\n")
    assert load_config().lake.root == "./lake"


def test_a_wheel_alone_on_sys_path_finds_its_config(tmp_path):
    """What `spark-submit --py-files cleanwell.zip` gives the driver: the package as a zip, no checkout."""
    wheel_dir = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(wheel_dir), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(wheel_dir.glob("cleanwell-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"jobs/conf/base.yaml", "jobs/conf/mixtures/demo.yaml", "jobs/conf/expectations/gold.yaml",
            "jobs/conf/log4j2.properties"} <= set(names)
    script = (
        "import jobs, json\n"
        "from jobs.common.config import load_config, load_mixture\n"
        "from jobs.common import gates, storage\n"
        "cfg = load_config(['conf/demo.yaml'])\n"
        "print(json.dumps({'jobs': jobs.__file__, 'mixture': load_mixture(cfg.sample.mixture).name,\n"
        "                  'suite': len(gates.load_suite(cfg, 'gold')),\n"
        "                  'log4j': storage.materialized_conf('log4j2.properties').read_text()[:20]}))\n")
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    proc = subprocess.run([sys.executable, "-c", script], cwd=run_dir, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(wheel), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout)
    assert seen["jobs"].startswith(str(wheel)), seen
    assert seen["mixture"] == "demo" and seen["suite"] > 0 and seen["log4j"]


# slow: reruns steps on a forked lake (~30 s); test_object_store covers URI lakes in the fast suite.
@pytest.mark.slow
@pytest.mark.spark
def test_a_file_uri_lake_and_output_folders(spark, fork_demo):
    """lake.root, manifests, reports and export shards given as file:// URIs, as a cluster config would."""
    from jobs import report, sample
    from jobs.common import tables
    from jobs.common.runner import execute
    from jobs.pipeline import STEPS

    _, copy = fork_demo()
    exports = copy / "exports"
    mixture = yaml.safe_load((REPO / "conf" / "mixtures" / "demo.yaml").read_text())
    mixture["export"]["dir"] = exports.as_uri()
    (copy / "mixture.yaml").write_text(yaml.safe_dump(mixture))
    cfg, _ = fork_demo(f"lake.root={(copy / 'lake').as_uri()}", f"sample.manifest_dir={(copy / 'm').as_uri()}",
                       f"report.dir={(copy / 'r').as_uri()}", f"sample.mixture={(copy / 'mixture.yaml').as_uri()}")
    assert tables.table_ref(cfg, "gold").location.startswith("file://")
    before = tables.current_version(spark, tables.table_ref(cfg, "gold"))
    outcome = execute(sample.STEP, spark, cfg, steps=STEPS, force=True)
    assert tables.current_version(spark, tables.table_ref(cfg, "gold")) == before + 1
    manifest = json.loads((copy / "m" / "demo" / "latest.json").read_text())
    assert manifest["documents"] == outcome.summary["documents"] > 0
    assert list((exports / "demo").glob("*/part-*"))
    execute(report.STEP, spark, cfg, steps=STEPS, force=True)
    assert "cleanwell run report" in (copy / "r" / "latest.html").read_text()
