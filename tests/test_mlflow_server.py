"""MLflow for teams: a real tracking server, run tags and pipeline grouping, the champion alias.

Every test talks to the session's ``mlflow server`` (tests/mlflow_server.py) under its own experiment and
registered-model name. The slow test runs each pipeline step as its own process, as Airflow does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from jobs.common.config import load_config
from jobs.common.tracking import configure, pipeline_run, tracked_run
from jobs.detect import CHAMPION_COMPARISON, HELD_BACK_BUCKETS, is_held_back, train_standalone, training_set
from jobs.pipeline import echo_locations
from tests.conftest import REPO

CLEANWELL = str(Path(sys.executable).with_name("cleanwell"))
WIKIPEDIA = "data/m4/wikipedia_llama2.jsonl"


def checkout_sha() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def workdir(tmp_path: Path) -> Path:
    """An empty working directory (as an Airflow task gets) that sees the demo data and config."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("conf", "data"):
        (work / name).symlink_to(REPO / name)
    return work


def local_mlflow_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name in ("mlruns", "mlartifacts", "mlflow.db"))


def cleanwell(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    done = subprocess.run([CLEANWELL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"cleanwell {args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def process_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_REGISTRY",
                                                                     "AIRFLOW_CTX_", "CLEANWELL_"))}
    return {**env, **extra}


def server_config(server, tmp_path: Path, name: str, *extra: str):
    return load_config(overrides=[f"tracking.uri={server.uri}", f"tracking.experiment={name}",
                                  f"tracking.artifact_root={tmp_path / 'never-used'}",
                                  f"detect.registered_model={name}-detector", *extra])


def test_tracked_runs_carry_version_git_sha_airflow_ids_and_the_pipeline_run_id(mlflow_server, tmp_path,
                                                                               monkeypatch):
    cfg = server_config(mlflow_server, tmp_path, "tags")
    with pipeline_run(cfg) as parent_id, tracked_run(cfg, "first") as first:
        pass
    client = MlflowClient(mlflow_server.uri)
    parent, step = client.get_run(parent_id).data.tags, client.get_run(first.run_id).data.tags
    # Without CLEANWELL_PIPELINE_RUN_ID the group is the enclosing `cleanwell run`.
    assert parent["cleanwell.pipeline_run_id"] == step["cleanwell.pipeline_run_id"] == parent_id
    assert step["cleanwell.version"] == metadata.version("cleanwell")
    assert step["cleanwell.git_sha"] == step["mlflow.source.git.commit"] == checkout_sha()
    assert not any(name.startswith("airflow.") for name in step)

    monkeypatch.setenv("CLEANWELL_PIPELINE_RUN_ID", "scheduled__2026-12-01")
    monkeypatch.setenv("CLEANWELL_GIT_SHA", "0123abc")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "cleanwell")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__1")
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "dedup")
    with tracked_run(cfg, "second") as second:
        pass
    tags = client.get_run(second.run_id).data.tags
    assert tags["cleanwell.pipeline_run_id"] == "scheduled__2026-12-01"
    assert (tags["cleanwell.git_sha"], tags["airflow.dag_id"], tags["airflow.run_id"], tags["airflow.task_id"]) \
        == ("0123abc", "cleanwell", "manual__1", "dedup")
    assert "mlflow-artifacts:" in client.get_experiment_by_name("tags").artifact_location


def test_registry_uri_sends_registrations_to_its_own_store(mlflow_server, tmp_path):
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    configure(server_config(mlflow_server, tmp_path, "registry", f"tracking.registry_uri={registry}"))
    assert mlflow.get_registry_uri() == registry
    MlflowClient().create_registered_model("registry-only")
    assert MlflowClient(registry_uri=registry).get_registered_model("registry-only").name == "registry-only"
    server = MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri)
    assert server.search_registered_models("name = 'registry-only'") == []

    configure(server_config(mlflow_server, tmp_path, "registry"))  # unset again: the tracking server
    assert mlflow.get_registry_uri() == mlflow_server.uri


def test_a_configured_tracking_uri_wins_over_the_environment_and_the_environment_over_the_default(monkeypatch):
    # An Airflow task passes tracking.uri=… explicitly; a worker that exports MLFLOW_TRACKING_URI (or
    # Databricks, which does) must not redirect it, but with nothing configured the variable is used.
    from jobs.common import tracking

    monkeypatch.setattr(tracking, "_USER_TRACKING_URI", "sqlite:////env/mlflow.db")
    monkeypatch.setattr(tracking, "_USER_REGISTRY_URI", "sqlite:////env/registry.db")
    explicit = load_config([], ["tracking.uri=sqlite:////explicit.db", "tracking.registry_uri=databricks-uc"])
    assert (tracking.tracking_uri(explicit), tracking.registry_uri(explicit)) == ("sqlite:////explicit.db",
                                                                                  "databricks-uc")
    unset = load_config([], [])
    assert (tracking.tracking_uri(unset), tracking.registry_uri(unset)) == ("sqlite:////env/mlflow.db",
                                                                            "sqlite:////env/registry.db")
    monkeypatch.setattr(tracking, "_USER_TRACKING_URI", None)
    monkeypatch.setattr(tracking, "_USER_REGISTRY_URI", None)
    assert (tracking.tracking_uri(unset), tracking.registry_uri(unset)) == ("sqlite:///mlflow.db", None)


def test_held_back_texts_are_a_fixed_fifth_that_training_never_sees(tmp_path):
    cfg = load_config(overrides=[f"detect.training_files=[{WIKIPEDIA}]"])
    data = training_set(cfg)
    held_back = data.held_back_human + data.held_back_machine
    assert not set(held_back) & set(data.texts)
    assert all(map(is_held_back, held_back)) and not any(map(is_held_back, data.texts))
    share = len(held_back) / (len(held_back) + len(data.texts))
    assert abs(share - 1 / HELD_BACK_BUCKETS) < 0.08
    # The cap on training documents leaves the held-back texts alone.
    small = training_set(load_config(overrides=[f"detect.training_files=[{WIKIPEDIA}]",
                                                "detect.max_training_documents=10"]))
    assert (small.held_back_human, small.held_back_machine) == (data.held_back_human, data.held_back_machine)
    assert len(small.texts) == 10


def test_champion_alias_moves_only_to_a_version_at_least_as_good_on_held_back_texts(mlflow_server, tmp_path):
    """v1 (trained on 10 texts) takes the free alias; v2 (all training texts) beats it; v3 (10 texts again)
    scores worse than v2 and leaves the alias on v2; v4 (same data as v2, same seed) ties and takes it."""
    full = server_config(mlflow_server, tmp_path, "champion", f"detect.training_files=[{WIKIPEDIA}]")
    tiny = server_config(mlflow_server, tmp_path, "champion", f"detect.training_files=[{WIKIPEDIA}]",
                         "detect.max_training_documents=10")
    outcomes = [train_standalone(cfg) for cfg in (tiny, full, tiny, full)]
    assert outcomes[0].endswith("version 1; champion -> version 1 (first registration)")
    assert "version 2; champion -> version 2 (held-back AUROC" in outcomes[1]
    assert "version 3; champion stays on version 2 (held-back AUROC" in outcomes[2]
    assert "version 4; champion -> version 4 (held-back AUROC" in outcomes[3]

    client = MlflowClient(mlflow_server.uri)
    assert client.get_model_version_by_alias("champion-detector", "champion").version == "4"
    runs = {v: client.get_run(client.get_model_version("champion-detector", str(v)).run_id) for v in (1, 2, 3, 4)}
    metrics = {v: run.data.metrics for v, run in runs.items()}
    assert metrics[3]["held_back.candidate.auroc"] < metrics[3]["held_back.champion.auroc"]
    assert metrics[2]["held_back.candidate.auroc"] > metrics[2]["held_back.champion.auroc"]
    assert metrics[4]["held_back.candidate.auroc"] == metrics[4]["held_back.champion.auroc"]
    assert metrics[3]["held_back.champion.auroc"] == metrics[2]["held_back.candidate.auroc"]  # same texts
    assert "held_back.champion.auroc" not in metrics[1]
    assert [runs[v].data.tags["detector.alias_moved"] for v in (1, 2, 3, 4)] == ["true", "true", "false", "true"]
    assert runs[3].data.tags["detector.champion_version"] == "2" and runs[3].data.tags["detector.alias_version"] == "2"
    comparison = mlflow.artifacts.load_dict(f"runs:/{runs[3].info.run_id}/{CHAMPION_COMPARISON}")
    assert (comparison["candidate_version"], comparison["champion_version"], comparison["moves"]) == (3, 2, False)
    assert comparison["champion"]["auroc"] == metrics[3]["held_back.champion.auroc"]
    assert comparison["n_human"] == metrics[3]["held_back.n_human"] >= 5
    assert client.get_model_version("champion-detector", "3").tags["alias_decision"].startswith("champion stays")


def test_train_detector_process_registers_through_the_server(mlflow_server, tmp_path):
    """One cheap command as a scheduler would start it: its own process, an empty working directory,
    only the server's URI. The model and tokenizer land in the server's artifact store, nothing locally."""
    work = workdir(tmp_path)
    env = process_env(CLEANWELL_PIPELINE_RUN_ID="nightly-7", CLEANWELL_GIT_SHA="feedbeef",
                      AIRFLOW_CTX_DAG_ID="cleanwell", AIRFLOW_CTX_DAG_RUN_ID="manual__7",
                      AIRFLOW_CTX_TASK_ID="train_detector")
    out = cleanwell(["train-detector", f"tracking.uri={mlflow_server.uri}", "tracking.experiment=process",
                     "detect.registered_model=process-detector", f"detect.training_files=[{WIKIPEDIA}]",
                     "tokenizer.vocab_size=2000"], work, env)
    assert "process-detector version 1; champion -> version 1 (first registration)" in out

    client = MlflowClient(mlflow_server.uri)
    version = client.get_model_version_by_alias("process-detector", "champion")
    run = client.get_run(version.run_id)
    assert run.data.tags["cleanwell.pipeline_run_id"] == "nightly-7"
    assert run.data.tags["cleanwell.git_sha"] == "feedbeef"
    assert (run.data.tags["airflow.dag_id"], run.data.tags["airflow.task_id"]) == ("cleanwell", "train_detector")
    experiment = run.info.experiment_id
    assert (mlflow_server.artifacts / experiment / run.info.run_id / "artifacts" / "tokenizer" / "spm.model").is_file()
    bundles = list((mlflow_server.artifacts / experiment).rglob("detector_bundle.pkl"))
    assert len(bundles) == 1
    assert local_mlflow_folders(work) == []


def test_a_password_in_the_tracking_uri_is_never_printed_and_still_reaches_mlflow(mlflow_server, tmp_path,
                                                                                   monkeypatch, capfd):
    """issue #13: MLflow's run links and cleanwell's closing lines printed `http://user:SECRET@host`.
    The credentials now travel as MLFLOW_TRACKING_USERNAME/PASSWORD (MLflow's basic auth) and the URI
    MLflow sees is bare."""
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    secret_uri = mlflow_server.uri.replace("http://", "http://alice:S3CRET%21pw@")
    cfg = server_config(mlflow_server, tmp_path, "secret", f"tracking.uri={secret_uri}")
    with tracked_run(cfg, "secret-step") as log:
        log.metric("answer", 42)
    echo_locations(cfg)
    printed = capfd.readouterr()
    assert "S3CRET" not in printed.out + printed.err
    assert f"alice:***@{mlflow_server.uri.removeprefix('http://')}" in printed.out
    assert mlflow.get_tracking_uri() == mlflow_server.uri
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "S3CRET!pw")
    run = MlflowClient(mlflow_server.uri).get_run(log.run_id)
    assert run.data.metrics["answer"] == 42
    assert "S3CRET" not in json.dumps(run.data.params)
