"""A mixture's numbers: the per-cell aggregation of gold, the summary the `mixture` gate checks, and the
manifest (inputs by table version, config hash, the detector threshold applied, counts and breakdowns)
written beside each publish."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common import storage, tables
from jobs.common.config import Config, MixtureConfig, config_hash
from jobs.common.detector_registry import DetectorThreshold
from jobs.common.secrets import redact
from jobs.common.selection import epochs_allowed
from jobs.common.tracking import RunLog


def gold_cells(gold: DataFrame, mixture: MixtureConfig) -> list[dict[str, Any]]:
    """Rows and tokens of ``gold`` per (group, source, cluster, origin, epoch, duplicate marks): one
    aggregation (a few hundred cells) from which the gate's numbers and every manifest breakdown are
    summed on the driver, instead of a Spark job per number."""
    marks = {f"_{c}": F.col(c).isNotNull() if c in gold.columns else F.lit(False)
             for c in ("duplicate_of", "semantic_duplicate_of")}
    marks["_over_epoch_cap"] = F.col("epoch") >= epochs_allowed(mixture)  # per-source caps: a column
    keys = [F.col(mixture.group_by).cast("string").alias("_group"), "source", "cluster_id", "effective_origin",
            "epoch", *(mark.alias(name) for name, mark in marks.items())]
    return [r.asDict() for r in gold.groupBy(*keys).agg(F.count("*").alias("_rows"),
                                                        F.sum("n_tokens").alias("_tokens")).collect()]


def _sum_by(cells: list[dict[str, Any]], key: str, value: str = "_tokens") -> dict[Any, int]:
    totals: dict[Any, int] = {}
    for cell in cells:
        totals[cell[key]] = totals.get(cell[key], 0) + int(cell[value] or 0)
    return totals


def mixture_summary(gold: DataFrame, mixture: MixtureConfig,
                    cells: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The numbers the `mixture` gate checks, from the rows about to be published."""
    cells = gold_cells(gold, mixture) if cells is None else cells
    budget = mixture.token_budget
    tokens = sum(int(c["_tokens"] or 0) for c in cells)
    by_group = _sum_by(cells, "_group")
    by_source = _sum_by(cells, "source")
    synthetic = _sum_by(cells, "effective_origin").get("synthetic", 0)
    duplicates = sum(c["_rows"] * (int(c["_duplicate_of"]) + int(c["_semantic_duplicate_of"])) for c in cells)
    total_weight = sum(mixture.weights.values())
    weight_errors = {g: abs(by_group.get(g, 0) / max(tokens, 1) - w / total_weight) for g, w in mixture.weights.items()}
    epochs_over = sum(c["_rows"] for c in cells if c["_over_epoch_cap"])
    return {"tokens": tokens, "budget_error": abs(tokens / budget - 1), "synthetic_share": synthetic / budget,
            "duplicates_included": duplicates, "max_weight_error": max(weight_errors.values()),
            "max_source_share": max(by_source.values(), default=0) / budget, "copies_over_epoch_cap": epochs_over,
            "weight_errors": weight_errors}


@dataclass
class Decisions:
    """What the sampling job decided before publishing, as the manifest reports it."""
    corpus_cells: list[dict[str, Any]]  # selection.judged_cells of the judged corpus
    validation: dict[str, dict]  # per vetted synthetic source
    group_targets: dict[str, float]
    cell_targets: dict[tuple, float]
    detector_threshold: DetectorThreshold  # the synthetic_probability bar eligibility applied

    def excluded(self) -> dict[str, int]:
        """Documents excluded, per reason."""
        return {reason: n for reason, n in _sum_by(self.corpus_cells, "exclusion_reason", "documents").items()
                if reason is not None}

    def eligible_by_cluster(self) -> dict[str, dict[str, int]]:
        eligible = [c for c in self.corpus_cells if c["exclusion_reason"] is None]
        documents, tokens = _sum_by(eligible, "cluster_id", "documents"), _sum_by(eligible, "cluster_id", "tokens")
        return {str(k): {"documents": documents[k], "tokens": tokens[k]} for k in documents}


def build_manifest(mixture: MixtureConfig, gold: DataFrame, cells: list[dict[str, Any]], summary: dict[str, Any],
                   decisions: Decisions, inputs: dict[str, dict], run_id: str) -> dict[str, Any]:
    """The manifest of a mixture about to be published (``gold_version`` and ``export`` are added by the
    caller once written)."""
    def breakdown(key: str) -> dict[str, dict[str, int]]:
        """Rows ("documents": copies, as before) and tokens per value of ``key``."""
        rows, tokens = _sum_by(cells, key, "_rows"), _sum_by(cells, key)
        return {str(k): {"documents": rows[k], "tokens": tokens[k]} for k in rows}

    by_group = breakdown("_group")
    for group, target in decisions.group_targets.items():
        by_group.setdefault(group, {"documents": 0, "tokens": 0})["target_tokens"] = round(target)
    by_cluster = breakdown("cluster_id")
    available = decisions.eligible_by_cluster()
    for (_, cluster), target in decisions.cell_targets.items():
        entry = by_cluster.setdefault(str(cluster), {"documents": 0, "tokens": 0})
        entry["target_tokens"] = entry.get("target_tokens", 0) + round(target)
    for cluster, entry in by_cluster.items():
        entry["eligible_tokens"] = available.get(cluster, {}).get("tokens", 0)
    by_origin = breakdown("effective_origin")
    by_origin.setdefault("synthetic", {"documents": 0, "tokens": 0})["cap_tokens"] = round(
        mixture.max_synthetic_share * mixture.token_budget)
    return {
        "mixture": mixture.name, "run_id": run_id, "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "config_hash": config_hash(mixture), "mixture_config": mixture.model_dump(mode="json"),
        "inputs": inputs, "token_budget": mixture.token_budget, "tokens": summary["tokens"],
        "documents": gold.select("doc_id").distinct().count(), "rows": sum(c["_rows"] for c in cells),
        "synthetic_share": summary["synthetic_share"], "excluded_by_reason": decisions.excluded(),
        "eligible_documents": sum(v["documents"] for v in available.values()),
        "synthetic_validation": decisions.validation,
        "detector_threshold": decisions.detector_threshold.as_dict(),
        "group_by": mixture.group_by, "by_group": by_group, "by_source": breakdown("source"),
        "by_origin": by_origin, "by_cluster": by_cluster, "by_epoch": breakdown("epoch"),
        "gate_summary": {k: v for k, v in summary.items() if k != "weight_errors"},
    }


def manifest_folder(cfg: Config) -> str:
    """``sample.manifest_dir``, or ``<lake.root>/manifests`` when it is empty (a fixed ``./lake/manifests``
    default wrote the manifests of every lake root into the working directory's lake)."""
    return cfg.sample.manifest_dir or storage.join(tables.lake_root(cfg), "manifests")


def write_manifest(spark: SparkSession, cfg: Config, manifest: dict[str, Any], log: RunLog) -> str:
    manifest = redact(manifest)  # a credential in the mixture config (a source URI) stays out of evidence
    folder = storage.join(manifest_folder(cfg), manifest["mixture"])
    path = storage.join(folder, f"{manifest['run_id']}.json")
    text = json.dumps(manifest, indent=2, default=str)
    storage.write_text(path, text)
    storage.write_text(storage.join(folder, "latest.json"), text)
    row = [(manifest["run_id"], manifest["mixture"], manifest["config_hash"], manifest["inputs"]["silver"]["version"],
            manifest["gold_version"], manifest["token_budget"], manifest["tokens"], manifest["documents"],
            json.dumps(manifest, default=str), dt.datetime.now(dt.UTC))]
    schema = ("run_id string, mixture string, config_hash string, silver_version long, gold_version long, "
              "token_budget long, tokens long, documents long, manifest string, created_at timestamp")
    # One row per mixture built from one silver version with one config: a rerun of sample on the same
    # inputs (--force, or after a run killed between this write and its success record) replaces the row
    # instead of adding a second one for the same mixture. The per-run JSON files above and the table's
    # Delta history keep the replaced manifest.
    tables.merge_upsert(tables.local_frame(spark, row, schema), tables.table_ref(cfg, "manifests"),
                        ("mixture", "silver_version", "config_hash"), run_id=log.run_id)
    log.artifact_text(text, f"manifest/{manifest['run_id']}.json")
    return path


def input_versions(spark: SparkSession, cfg: Config, silver_version: int) -> dict[str, dict]:
    inputs = {"silver": {"location": str(tables.table_ref(cfg, "silver")), "version": silver_version}}
    for name in ("bronze", "clusters"):
        ref = tables.table_ref(cfg, name)
        version = tables.current_version(spark, ref)
        if version is not None:
            inputs[name] = {"location": str(ref), "version": version}
    return inputs
