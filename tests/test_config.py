"""Typed config: layering, overrides, errors that name the bad key, docs in sync."""
from __future__ import annotations

import datetime as dt

import pytest

from jobs.common.config import config_docs, load_config, load_mixture
from jobs.common.errors import ConfigError
from tests.conftest import DEMO_CONFIG, REPO


def test_base_demo_and_overrides_layer_in_order(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("ingest:\n  max_text_bytes: 1234\nlake:\n  root: /from/file\n")
    cfg = load_config([str(DEMO_CONFIG), str(extra)], ["lake.root=/from/cli", "provenance.ai_cutoff_date=2020-01-01",
                                                      "spark.conf.spark.sql.shuffle.partitions=3"])
    assert cfg.ingest.max_text_bytes == 1234          # later file wins over demo.yaml's 200000
    assert cfg.lake.root == "/from/cli"                # override wins over files
    assert cfg.provenance.ai_cutoff_date == dt.date(2020, 1, 1)
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == "3"
    assert [s.name for s in cfg.ingest.sources] == ["wikipedia", "wikihow", "llama2", "archive", "injected"]


@pytest.mark.parametrize("override, key", [
    ("ingest.max_txt_bytes=5", "ingest.max_txt_bytes"),
    ("ingest.max_text_bytes=-1", "ingest.max_text_bytes"),
    ("provenance.ai_cutoff_date=someday", "provenance.ai_cutoff_date"),
    ("nosuchsection.x=1", "nosuchsection"),
    # names that end up in SQL (catalog mode) or as folders must be identifiers, never spliced as given
    ("tables.silver=silver; DROP TABLE gold", "tables.silver"),
    ("tables.gold=../outside", "tables.gold"),
    ("lake.catalog=main.x-y", "lake.catalog"),
    ("lake.catalog=a.b.c", "lake.catalog"),
    ("collapse_lab.generations=0", "collapse_lab.generations"),
])
def test_bad_keys_and_values_are_named(override, key):
    with pytest.raises(ConfigError, match=rf"`{key}`"):
        load_config(overrides=[override])


def test_source_with_unknown_field_or_origin_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  sources:\n    - {name: a, path: p, format: jsonl, columns: {txt: body}}\n")
    with pytest.raises(ConfigError, match=r"ingest\.sources\.0\.columns.*txt"):
        load_config([str(bad)])
    bad.write_text("ingest:\n  sources:\n    - {name: a, path: p, format: jsonl, defaults: {origin: robot}}\n")
    with pytest.raises(ConfigError, match=r"defaults\.origin"):
        load_config([str(bad)])


def test_override_must_be_key_value():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["lake.root"])


def test_missing_config_file_is_a_clear_error():
    with pytest.raises(ConfigError, match="not found"):
        load_config(["/no/such/file.yaml"])


def test_section_hash_changes_only_with_its_section():
    a = load_config()
    b = load_config(overrides=["lake.root=/elsewhere"])
    c = load_config(overrides=["ingest.max_text_bytes=10"])
    assert a.section_hash("ingest") == b.section_hash("ingest") != c.section_hash("ingest")
    # Where outputs go is not what they contain: moving the manifest folder does not make sample stale.
    moved = load_config(overrides=["sample.manifest_dir=/elsewhere"])
    assert moved.section_hash("sample") == a.section_hash("sample")


def test_mixture_validation_names_the_key(tmp_path):
    demo = load_mixture("conf/mixtures/demo.yaml")
    assert (demo.token_budget, demo.epochs("archive"), demo.epochs("wikipedia")) == (150000, 3, 1)
    bad = tmp_path / "m.yaml"
    bad.write_text("name: x\ntoken_budget: 10\nweights: {a: 1}\nmax_synthetic_share: 2\n")
    with pytest.raises(ConfigError, match="max_synthetic_share"):
        load_mixture(str(bad))


def test_mixture_detector_threshold_is_a_target_rate_unless_fixed(tmp_path):
    demo = load_mixture("conf/mixtures/demo.yaml")
    assert (demo.filters.max_synthetic_probability, demo.filters.detector_target_fpr) == (None, 0.01)
    base = "name: x\ntoken_budget: 10\nweights: {a: 1}\nfilters:\n"
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(base + "  max_synthetic_probability: 0.8\n  detector_target_fpr: 0.05\n")
    assert (load_mixture(str(fixed)).filters.max_synthetic_probability,
            load_mixture(str(fixed)).filters.detector_target_fpr) == (0.8, 0.05)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(base + "  detector_target_fpr: 0.03\n")
    with pytest.raises(ConfigError, match=r"`filters.detector_target_fpr`: Value error, must be one of 0.005, "
                       r"0.01, 0.02, 0.05, 0.1 .*got 0.03"):
        load_mixture(str(unknown))


def test_docs_list_every_key():
    assert (REPO / "docs" / "config.md").read_text(encoding="utf-8") == config_docs() + "\n", \
        "docs/config.md is stale: run `cleanwell config --docs > docs/config.md`"


def test_relative_lake_root_becomes_an_absolute_table_path(tmp_path, monkeypatch):
    from jobs.common.tables import table_ref

    monkeypatch.chdir(tmp_path)
    ref = table_ref(load_config(overrides=["lake.root=./lake"]), "silver")
    assert ref.location == f"{tmp_path}/lake/silver_documents" and ref.by_path
    remote = table_ref(load_config(overrides=["lake.root=s3://bucket/lake/"]), "silver")
    assert remote.location == "s3://bucket/lake/silver_documents"
    catalog = table_ref(load_config(overrides=["lake.catalog=main.cleanwell"]), "gold")
    assert (catalog.location, catalog.by_path) == ("main.cleanwell.gold_mixture", False)


def test_configured_driver_java_options_keep_the_log4j_settings():
    # spark.conf's extraJavaOptions used to replace the log4j option get_spark sets (and the quiet console).
    from jobs.common.session import LOCAL_HEAP_OPTIONS, driver_java_options, local_conf

    conf = local_conf(load_config(overrides=["spark.conf.spark.driver.extraJavaOptions=-XX:MaxHeapFreeRatio=50"]))
    options = driver_java_options(conf).split()
    assert options[0].startswith("-Dlog4j2.configurationFile=")
    # the user's options last: the JVM takes the last value of a repeated flag
    assert options[1:] == [*LOCAL_HEAP_OPTIONS, "-XX:MaxHeapFreeRatio=50"]
    assert "spark.driver.extraJavaOptions" not in conf  # the builder sets the merged value alone
    assert driver_java_options(local_conf(load_config())).split()[1:] == list(LOCAL_HEAP_OPTIONS)


def test_a_configured_collector_replaces_g1_and_its_settings():
    # Two collectors on one command line: the JVM exits at start ("Multiple garbage collectors selected").
    from jobs.common.session import G1_OPTIONS, LOCAL_HEAP_OPTIONS, driver_java_options, local_conf

    def options(java_options: str) -> list[str]:
        conf = local_conf(load_config(overrides=[f"spark.conf.spark.driver.extraJavaOptions={java_options}"]))
        return driver_java_options(conf).split()[1:]

    shrinking = [o for o in LOCAL_HEAP_OPTIONS if o not in G1_OPTIONS]
    assert options("-XX:+UseParallelGC") == [*shrinking, "-XX:+UseParallelGC"]
    assert options("-Xss4m -XX:+UseSerialGC") == [*shrinking, "-Xss4m", "-XX:+UseSerialGC"]
    assert options("-XX:+UseG1GC") == [*LOCAL_HEAP_OPTIONS, "-XX:+UseG1GC"]  # G1 again: its settings stay
    assert options("-XX:+UseGCOverheadLimit") == [*LOCAL_HEAP_OPTIONS, "-XX:+UseGCOverheadLimit"]  # not a collector
    demo = local_conf(load_config([str(DEMO_CONFIG)]))
    assert "-XX:+UseG1GC" not in driver_java_options(demo).split()  # the demo's small-data choice


def test_the_local_jvm_runs_with_a_heap_that_shrinks(spark):
    """issue #16: the local JVM returns heap it does not use (G1, free ratio <= 30 %), so its idle
    resident memory does not add a full spark.driver.memory to the Python driver's peak."""
    from jobs.common.session import LOCAL_HEAP_OPTIONS

    runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    arguments = list(runtime.getInputArguments())
    assert set(LOCAL_HEAP_OPTIONS) <= set(arguments)
    beans = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    assert any("G1" in bean.getName() for bean in beans)
