"""The model-collapse lab (issue #12): a 2-generation run of every regime through the CLI, and the curation
of a pool with cleanwell's functions. The metrics themselves are tested in test_collapse_metrics.py."""
import json
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from jobs.collapse_lab import METRICS, Document, curate
from tests.conftest import REPO

TINY = ["collapse_lab.documents_per_generation=40", "collapse_lab.sequence_tokens=32", "collapse_lab.vocab_size=400",
        "collapse_lab.temperatures=[0.7, 1.0]", f"collapse_lab.human_files=[{REPO}/data/m4/wikipedia_llama2.jsonl]"]


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    args = ["collapse-lab", "--generations", "2", *TINY, f"collapse_lab.output_dir={root / 'out'}",
            f"tracking.uri=sqlite:///{root / 'm.db'}", f"tracking.artifact_root={root / 'art'}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return root, json.loads((root / "out" / "results.json").read_text()), result.output


def test_every_regime_and_temperature_runs_two_generations_and_writes_its_outputs(lab_run) -> None:
    root, results, output = lab_run
    regimes = ("replace", "accumulate", "curated", "curated_feedback")
    assert set(results["series"]) == {f"{r}@{t}" for r in regimes for t in (0.7, 1.0)}
    for series in results["series"].values():
        assert all(len(series[metric]) == 3 for metric in METRICS)  # generations 0, 1, 2
        assert all(np.isfinite(series[metric]).all() for metric in METRICS)
    assert {f"{metric}.png" for metric in METRICS} <= {p.name for p in (root / "out").iterdir()}
    report = (root / "out" / "report.html").read_text()
    assert report.count("<img") == len(METRICS) and "curated_feedback@0.7" in report
    assert "outputs in" in output and "report.html" in output
    # the MLflow run holds every metric per generation (step) and the figures
    mlflow.set_tracking_uri(f"sqlite:///{root / 'm.db'}")
    run = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`cleanwell.step` = 'collapse-lab'",
                             output_format="list")[0]
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "replace.T1.0.heldout_perplexity")
    assert [m.step for m in history] == [0, 1, 2]
    assert [m.value for m in history] == pytest.approx(results["series"]["replace@1.0"]["heldout_perplexity"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "collapse_lab")}
    assert "collapse_lab/report.html" in artifacts and "collapse_lab/tail_coverage.png" in artifacts


def test_training_sets_follow_their_regime(lab_run) -> None:
    _, results, _ = lab_run
    cap = results["settings"]["synthetic_cap"]
    for temperature in (0.7, 1.0):
        series = {r: results["series"][f"{r}@{temperature}"] for r in ("replace", "accumulate", "curated")}
        # generation 0 is the same human-trained model in every regime
        assert len({s["heldout_perplexity"][0] for s in series.values()}) == 1
        assert series["replace"]["synthetic_share"] == [0.0, 1.0, 1.0]
        # accumulate: N human pieces plus N samples per generation, all of the same length
        assert series["accumulate"]["synthetic_share"] == pytest.approx([0.0, 1 / 2, 2 / 3])
        assert max(series["curated"]["synthetic_share"]) <= cap + 1e-9
        # the photocopy of a photocopy: training on samples only loses held-out human text fastest
        replace, accumulate = series["replace"]["heldout_perplexity"], series["accumulate"]["heldout_perplexity"]
        assert replace[2] > replace[0] and replace[2] > accumulate[2]


def _document(text: str, origin: str, score: float = 0.0) -> Document:
    return Document(np.arange(len(text.split())), text, origin, -1 if origin == "human" else 1, score)


def test_curation_removes_duplicates_and_detected_text_and_caps_the_synthetic_share() -> None:
    words = [f"w{i}" for i in range(400)]
    human = [_document(" ".join(words[i * 40:(i + 1) * 40]), "human") for i in range(4)]
    near = " ".join(words[0:39] + ["changed"])  # Jaccard of word 5-grams with human[0]: 35/37 > 0.8
    synthetic = [_document(" ".join(words[200 + i * 40:240 + i * 40]), "synthetic", score=0.1 * i) for i in range(4)]
    pool = [*human, _document(human[1].text, "synthetic"), _document(near, "synthetic"),
            *synthetic, _document("x " * 40, "synthetic", score=0.99)]
    lab = SimpleNamespace(threshold=0.9, settings=SimpleNamespace(synthetic_cap=0.2))
    kept, removed = curate(pool, lab)
    assert removed == {"exact_duplicate": 1, "near_duplicate": 1, "detector": 1, "synthetic_cap": 3}
    assert [d.text for d in kept if d.origin == "human"] == [d.text for d in human]  # the human core is kept
    # 160 human tokens and a 20 % cap leave room for one 40-token synthetic piece: the most human-like
    assert [d.text for d in kept if d.origin == "synthetic"] == [synthetic[0].text]


@pytest.mark.slow  # two pipeline runs (~6 min); CI runs it
@pytest.mark.spark
def test_spark_engine_curates_each_generation_with_the_pipeline_steps_on_delta(spark, tmp_path) -> None:
    """--engine spark: every generation's pool becomes ingest sources with provenance, the pipeline's
    steps run on a Delta lake, and the gold mixture is the next training set."""
    from delta.tables import DeltaTable

    from jobs.collapse_lab import main
    from jobs.common.config import load_config

    human_file = f"{REPO}/data/m4/wikipedia_llama2.jsonl"
    cfg = load_config(overrides=[
        "collapse_lab.engine=spark", "collapse_lab.generations=2", "collapse_lab.documents_per_generation=60",
        "collapse_lab.sequence_tokens=64", "collapse_lab.vocab_size=400", "collapse_lab.temperatures=[1.0]",
        "collapse_lab.regimes=[curated]", f"collapse_lab.human_files=[{human_file}]",
        f"detect.training_files=[{human_file}]", f"collapse_lab.output_dir={tmp_path / 'out'}",
        f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", f"tracking.artifact_root={tmp_path / 'art'}"])
    results = main(cfg, progress=print)
    series = results["series"]["curated@1.0"]
    assert all(len(series[metric]) == 3 and np.isfinite(series[metric]).all() for metric in METRICS)
    lake = tmp_path / "out" / "spark" / "curated_T1.0" / "lake"
    # every pool document reached bronze with its provenance: 60 human pieces and 60 samples per generation
    bronze = spark.read.format("delta").load(str(lake / "bronze_documents"))
    counts = {(r["source"], r["origin"]): r["count"] for r in bronze.groupBy("source", "origin").count().collect()}
    assert counts == {("human", "human"): 60, ("g0", "synthetic"): 60, ("g1", "synthetic"): 60}
    # the last training set is the gold mixture the sampling job published, under the synthetic cap
    gold = spark.read.format("delta").load(str(lake / "gold_mixture"))
    assert gold.count() == series["training_documents"][2] > 0
    assert {r["source"] for r in gold.select("source").distinct().collect()} <= {"human", "g0", "g1"}
    manifest = json.loads((tmp_path / "out" / "spark" / "curated_T1.0" / "manifests" / "collapse_lab"
                           / "latest.json").read_text())
    assert 0 < manifest["synthetic_share"] <= cfg.collapse_lab.synthetic_cap + 1e-9
    assert manifest["documents"] == series["training_documents"][2]
    history = DeltaTable.forPath(spark, str(lake / "gold_mixture")).history().collect()
    assert len(history) >= 2  # generation 1's and generation 2's mixtures
    # the steps ran as MLflow runs nested under the lab's run, with the lab's own registered detector
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    steps = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string=f"tags.`mlflow.parentRunId` = '{results['mlflow_run_id']}'")
    names = [r.info.run_name for r in steps]
    assert names.count("ingest") == names.count("sample") == 2 and "report" not in names
    registered = {m.name for m in mlflow.MlflowClient().search_registered_models()}
    assert registered == {"collapse-lab-curated_T1_0"}


def test_spark_engine_starts_from_empty_lakes(tmp_path) -> None:
    """The sources of a lake are written once a generation; an earlier lab run's samples must not be
    read as this run's."""
    from jobs.collapse_lab import SparkCuration
    from jobs.common.config import load_config

    stale = tmp_path / "out" / "spark" / "curated_T1.0" / "sources" / "g0" / "part-0.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"text": "an earlier run", "lab_index": 7}\n')
    said = []
    curation = SparkCuration(load_config(overrides=[f"collapse_lab.output_dir={tmp_path / 'out'}"]), said.append)
    assert not curation.root.exists() and not stale.exists()
    assert said and "replacing" in said[0]
