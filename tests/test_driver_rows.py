"""Issue #13: no step brings a row per document to the driver; what it collects is an aggregate, a
sample capped by configuration, or a row per file, group or run.

The demo fixture runs the whole pipeline inside :func:`tests.driver_rows.recording`, so every
row-returning DataFrame action of every step is on record here without another run. The demo has 430
documents: a per-document collect of any of its tables (or of a sizeable part, such as gold) returns more
than :data:`BOUND` rows. The capped samples may return up to their configured size, which does not grow
with the corpus (docs/reliability.md, "Bounded driver memory").
"""
from __future__ import annotations

import pytest

from jobs.common.config.mixture import load_mixture
from jobs.common.labelled import read_labelled
from jobs.common.selection import FILL_CANDIDATES_PER_GROUP
from jobs.detect import HELD_BACK_MAX_PER_LABEL
from jobs.report import SAMPLE_ROWS
from tests import driver_rows
from tests.driver_rows import DriverRows, recording
from udfs.heuristics import QUALITY_RULES

BOUND = 100  # rows: under a quarter of the demo's documents; gold alone holds 133
# Exclusion reasons beside the quality rules (jobs/common/eligibility.py and the duplicate marks).
OTHER_REASONS = 16


def caps(cfg) -> dict[str, int]:
    """The driver-side samples and per-cell aggregates, by the function that takes them, with the
    bound each has. Every bound is set by configuration, none grows with the corpus."""
    mixture = load_mixture(cfg.sample.mixture)
    pair_texts = len(read_labelled(cfg.detect.training_files))
    sources = len(cfg.ingest.sources)
    groups = max(len(mixture.weights), sources) + 1
    # (reason, group, cluster, source): one row per cell, however many documents fill it
    cells = (len(QUALITY_RULES) + OTHER_REASONS + 1) * groups * cfg.clusters.k * sources
    return {
        "jobs/common/schema.py:reference_sample": max(cfg.tokenizer.train_sample, cfg.embeddings.fit_sample),
        # per label: the training share and the held-back fifth, each plus as many as the pairs could remove
        "jobs/detect.py:declared_sample": (cfg.detect.max_training_documents
                                           + 2 * (HELD_BACK_MAX_PER_LABEL + pair_texts)),
        "jobs/embed.py:_vectors": cfg.clusters.fit_sample,
        "jobs/embed.py:diversity_metrics": max(cfg.clusters.distinct_n_sample, cfg.clusters.vendi_sample),
        "jobs/common/gates.py:_local_copy": cfg.gates.local_max_rows,
        "jobs/common/eligibility.py:_embeddings": mixture.synthetic.validation.sample,
        "jobs/common/selection.py:judged_cells": cells,
        # the fill's candidates: per group, 200 or twice the shortfall's worth of documents (the budget's)
        "jobs/common/selection.py:_fill": groups * max(FILL_CANDIDATES_PER_GROUP, 2 * mixture.token_budget),
        "jobs/report.py:signals_section": SAMPLE_ROWS,
    }


def unbounded(records: list[DriverRows], capped: dict[str, int], bound: int = BOUND) -> list[DriverRows]:
    """The records that brought more rows than their site may."""
    return [r for r in records if r.rows > capped.get(r.site, bound)]


def test_no_step_of_the_demo_run_collects_a_row_per_document(demo) -> None:
    cfg, _, outcomes = demo
    records = driver_rows.RECORDED["demo"]
    assert {o.status for o in outcomes.values()} == {"ran"}
    sites = {r.site for r in records}
    # The recorder saw the run: the detector's training sample and the gates' local copies at least.
    assert {"jobs/detect.py:declared_sample", "jobs/common/gates.py:_local_copy"} <= sites, sites
    assert unbounded(records, caps(cfg)) == []


@pytest.mark.spark
def test_the_recorder_sees_a_per_document_collect(spark) -> None:
    """The check above can fail: a collect of every row is recorded with its count and flagged."""
    with recording() as records:
        rows = spark.range(500).collect()
        table = spark.range(3).toArrow()
        pandas = spark.range(170).toPandas()
    assert len(rows) == 500 and table.num_rows == 3 and len(pandas) == 170
    assert [(r.action, r.rows) for r in records] == [("collect", 500), ("toArrow", 3), ("toPandas", 170)]
    assert [r.rows for r in unbounded(records, {})] == [500, 170]
    assert unbounded(records, {}, bound=500) == []
