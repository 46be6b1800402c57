"""Report: one self-contained HTML file (plots inlined) of what went in and out of the lake.

Reads the tables only (never recomputes a signal): record counts per stage, quarantine and removal
reasons, composition by source and origin at each stage, signal distributions, the latest gate
outcomes and the latest mixture manifest. Written to ``report.dir`` as report-<run>.html and
latest.html, and logged to MLflow.
"""
from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import html
import io
import json
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.util import inheritable_thread_target

from jobs.common import storage, tables
from jobs.common.config import Config
from jobs.common.runner import Step, job_main
from jobs.common.tracking import RunLog

REPORTED_SIGNALS = ("n_tokens", "alpha_ratio", "duplicate_line_fraction", "gopher_dup_5gram_char_fraction",
                    "synthetic_probability", "watermark_z")
SAMPLE_ROWS = 50_000


def _plot(draw) -> str:
    # matplotlib's object API, not pyplot: no global figure registry, no backend to select (a PNG is
    # drawn with Agg), nothing to close.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.6), dpi=100)
    draw(fig.subplots())
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, classes="t", escape=True) if len(frame) else "<p><i>none</i></p>"


def _maybe(spark: SparkSession, cfg: Config, name: str) -> tuple[DataFrame | None, int | None]:
    ref = tables.table_ref(cfg, name)
    version = tables.current_version(spark, ref)
    return (tables.read_table(spark, ref, version), version) if version is not None else (None, None)


DUPLICATE_MARKS = (("near_duplicate", "duplicate_of"), ("semantic_duplicate", "semantic_duplicate_of"))


def stage_cells(frame: DataFrame) -> pd.DataFrame:
    """Documents per (origin, source) of one stage, with the count of duplicate marks where the stage has
    them: one aggregation gives the stage's row count, both compositions and the duplicate removals (they
    were a dozen separate scans of bronze, silver and gold, ~0.5-1 s each on the demo)."""
    marks = [F.count(column).alias(column) for _, column in DUPLICATE_MARKS if column in frame.columns]
    return frame.groupBy("origin", "source").agg(F.count(F.lit(1)).alias("count"), *marks).toPandas()


def _composition(cells: dict[str, pd.DataFrame], column: str) -> pd.DataFrame:
    parts = [frame.groupby(column)["count"].sum().reset_index().assign(stage=stage)
             for stage, frame in cells.items()]
    if not parts:
        return pd.DataFrame()
    return (pd.concat(parts).pivot_table(index=column, columns="stage", values="count", fill_value=0)
            .reindex(columns=list(cells)).astype(int))


class Section(NamedTuple):
    """One part of the page, and the facts (facts.json) it adds."""

    html: str
    facts: dict[str, Any]


NOTHING = Section("", {})


@dataclass(frozen=True)
class Lake:
    """The tables a report reads, each at its current version; None for a table not written yet."""

    bronze: DataFrame | None
    silver: DataFrame | None
    gold: DataFrame | None
    quarantine: DataFrame | None
    gate_results: DataFrame | None
    manifests: DataFrame | None
    clusters: DataFrame | None
    versions: dict[str, int | None]

    @property
    def stages(self) -> dict[str, DataFrame]:
        """The document tables that exist, in pipeline order."""
        return {name: frame for name, frame in (("bronze", self.bronze), ("silver", self.silver),
                                                ("gold", self.gold)) if frame is not None}


def read_lake(spark: SparkSession, cfg: Config) -> Lake:
    read = {name: _maybe(spark, cfg, name)
            for name in ("bronze", "silver", "gold", "quarantine", "gate_results", "manifests", "clusters")}
    return Lake(**{name: frame for name, (frame, _) in read.items()},
                versions={name: read[name][1] for name in ("bronze", "silver", "gold", "quarantine")})


def latest_manifest(manifests: DataFrame | None) -> dict[str, Any] | None:
    """The newest mixture manifest (read once: the removals and the mixture sections both use it)."""
    if manifests is None:
        return None
    return json.loads(manifests.orderBy(F.col("created_at").desc()).first()["manifest"])


def row_counts(cells: dict[str, pd.DataFrame], quarantine: pd.DataFrame | None) -> dict[str, int]:
    counts = {name: int(frame["count"].sum()) for name, frame in cells.items()}
    counts["quarantine"] = int(quarantine["count"].sum()) if quarantine is not None else 0
    return counts


def _removals(silver: pd.DataFrame, quarantine: pd.DataFrame | None, counts: dict[str, int],
              manifest: dict[str, Any] | None) -> dict[str, int]:
    removed: dict[str, int] = {}
    if quarantine is not None:
        by_reason = quarantine.groupby("reason", dropna=False)["count"].sum()
        removed.update({f"quarantine:{reason}": n for reason, n in by_reason.items()})
    if "bronze" in counts:
        removed["exact_duplicate"] = counts["bronze"] - counts.get("silver", 0)
    for reason, column in DUPLICATE_MARKS:
        if column in silver.columns:
            removed[reason] = silver[column].sum()
    if manifest is not None:
        removed.update({f"mixture:{k}": v for k, v in manifest.get("excluded_by_reason", {}).items()
                        if k not in ("near_duplicate", "semantic_duplicate")})
    return {k: int(v) for k, v in removed.items() if v}


def rows_section(counts: dict[str, int], versions: dict[str, int | None]) -> Section:
    return Section("<h2>Rows per table</h2>" + _table(pd.DataFrame(
        [{"table": k, "rows": v, "version": versions.get(k)} for k, v in counts.items()])), {"rows": counts})


def quarantine_reasons(quarantine: DataFrame | None) -> pd.DataFrame | None:
    """Quarantined records per (source, reason): the section's table, and the counts and removals."""
    if quarantine is None:
        return None
    return quarantine.groupBy("source", "reason").count().orderBy("source", "reason").toPandas()


def quarantine_section(reasons: pd.DataFrame | None) -> Section:
    if reasons is None:
        return NOTHING
    by_reason = reasons.groupby("reason")["count"].sum().sort_values()
    return Section("<h2>Quarantined records by reason</h2>" + _plot(
        lambda ax: (by_reason.plot.barh(ax=ax, color="#c0504d"), ax.set_xlabel("records"))) + _table(reasons), {})


def composition_section(cells: dict[str, pd.DataFrame], column: str) -> Section:
    comp = _composition(cells, column)
    if not len(comp):
        return NOTHING
    return Section(f"<h2>Documents by {column} at each stage</h2>" + _plot(
        lambda ax: (comp.plot.barh(ax=ax), ax.set_xlabel("documents"))) + _table(comp.reset_index()), {})


def removals_section(cells: dict[str, pd.DataFrame], quarantine: pd.DataFrame | None, counts: dict[str, int],
                     manifest: dict[str, Any] | None) -> Section:
    if "silver" not in cells:
        return NOTHING
    removed = _removals(cells["silver"], quarantine, counts, manifest)
    if not removed:
        return Section("", {"removed_by_reason": removed})
    frame = pd.Series(removed).sort_values()
    return Section("<h2>Documents removed or excluded, by reason</h2><p>Quarantine at ingest, duplicates "
                   "collapsed or marked in silver, and exclusions of the latest mixture.</p>" + _plot(
                       lambda ax: (frame.plot.barh(ax=ax, color="#8064a2"), ax.set_xlabel("documents")))
                   + _table(frame.rename_axis("reason").reset_index(name="documents")),
                   {"removed_by_reason": removed})


def cluster_sizes(clusters: DataFrame | None) -> pd.DataFrame | None:
    if clusters is None:
        return None
    return clusters.select("cluster_id", "size").orderBy("cluster_id").toPandas().set_index("cluster_id")


def clusters_section(sizes: pd.DataFrame | None) -> Section:
    if sizes is None:
        return NOTHING
    return Section("<h2>Embedding clusters: documents per cluster (silver)</h2>" + _plot(
        lambda ax: (sizes["size"].plot.bar(ax=ax, color="#4bacc6"), ax.set_ylabel("documents"))),
        {"cluster_sizes": {int(k): int(v) for k, v in sizes["size"].items()}})


def signal_sample(silver: DataFrame | None) -> pd.DataFrame | None:
    """Up to SAMPLE_ROWS silver rows: origin and the reported signals silver has (None: none of them)."""
    present = [c for c in REPORTED_SIGNALS if silver is not None and c in silver.columns]
    return silver.select("origin", *present).limit(SAMPLE_ROWS).toPandas() if present else None


def signals_section(sample: pd.DataFrame | None) -> Section:
    if sample is None:
        return NOTHING
    present = [c for c in sample.columns if c != "origin"]

    def draw(ax, column: str) -> None:
        for origin, part in sample.groupby("origin"):
            # one filled outline per origin, not 40 bar patches: matplotlib draws it ~2x faster
            ax.hist(part[column], bins=40, alpha=0.55, label=str(origin), histtype="stepfilled")
        ax.set_xlabel(column)
        ax.set_ylabel("documents")
        ax.legend()

    return Section("".join(f"<h3>Silver: {column} by origin</h3>" + _plot(partial(draw, column=column))
                           for column in present), {})


def gate_outcomes(gate_results: DataFrame | None) -> pd.DataFrame | None:
    """Every suite's latest outcomes."""
    if gate_results is None:
        return None
    latest = gate_results.groupBy("suite").agg(F.max("evaluated_at").alias("evaluated_at"))
    return (gate_results.join(latest, ["suite", "evaluated_at"])
            .select("suite", "target", "expectation", "kwargs", "success", "evaluated_at")
            .orderBy("suite", "expectation").toPandas())


def gates_section(outcomes: pd.DataFrame | None) -> Section:
    if outcomes is None:
        return NOTHING
    return Section("<h2>Latest gate outcomes</h2>" + _table(outcomes),
                   {"gates_failed": int((~outcomes["success"]).sum())})


def mixture_section(manifest: dict[str, Any] | None) -> Section:
    if manifest is None:
        return NOTHING
    html_parts = []
    achieved = pd.DataFrame(manifest["by_group"]).T.reset_index(names="group")
    if "target_tokens" in achieved:
        html_parts.append(f"<h2>Mixture “{html.escape(manifest['mixture'])}”: tokens achieved vs target</h2>"
                          + _plot(lambda ax: (achieved.set_index("group")[["tokens", "target_tokens"]]
                                              .plot.barh(ax=ax), ax.set_xlabel("tokens"))))
    clusters = pd.DataFrame(manifest.get("by_cluster", {})).T
    if len(clusters) and "eligible_tokens" in clusters:
        clusters = clusters.reindex(sorted(clusters.index, key=int))[["eligible_tokens", "target_tokens", "tokens"]]
        html_parts.append("<h2>Cluster coverage: eligible silver tokens vs mixture target and achieved</h2>" + _plot(
            lambda ax: (clusters.plot.bar(ax=ax), ax.set_xlabel("cluster"), ax.set_ylabel("tokens")))
            + _table(clusters.reset_index(names="cluster")))
    html_parts.append("<h3>Manifest</h3><pre>" + html.escape(json.dumps(manifest, indent=2)) + "</pre>")
    return Section("".join(html_parts), {"manifest": {k: manifest[k] for k in ("mixture", "run_id", "tokens",
                                                                               "token_budget")}})


def render_page(cfg: Config, body: str) -> str:
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>cleanwell run report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table.t{{border-collapse:collapse;font-size:13px;margin:.5em 0}} table.t td,table.t th{{padding:3px 8px;
border-bottom:1px solid #ddd;text-align:left}} pre{{background:#f6f6f6;padding:1em;font-size:12px;overflow:auto}}
img{{max-width:100%}}</style></head><body>
<h1>cleanwell run report</h1><p>Generated {generated}. Lake: <code>{html.escape(str(tables.table_ref(cfg, 'bronze')))}
</code> (table versions in the first table).</p>
{body}
</body></html>"""


# Threads issuing the report's queries. They are small and independent (one aggregation per table), so on
# a cold local JVM each is mostly driver-side latency (planning, the table's snapshot, job scheduling):
# issued at once they overlap, while the main thread draws the figures of those already back.
QUERY_THREADS = 3


def _inheriting(spark: SparkSession):
    """Wraps a thread's target so the caller's job group, description and scheduler pool go with it.
    PySpark without pinned threads (PYSPARK_PIN_THREAD=false) has nothing to carry and hands the session
    back instead of a wrapper."""
    wrap = inheritable_thread_target(spark)
    return (lambda function: function) if wrap is spark else wrap


def build_report(spark: SparkSession, cfg: Config) -> tuple[str, dict[str, Any]]:
    """The report page and its facts (row counts, removals by reason, cluster sizes, gate failures, the
    latest manifest's totals), from the tables at their current versions."""
    lake = read_lake(spark, cfg)
    in_thread = _inheriting(spark)
    with concurrent.futures.ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="cleanwell-report") as pool:
        def query(function, *args) -> concurrent.futures.Future:
            return pool.submit(in_thread(function), *args)

        # Submitted in the order the sections below need them.
        staged = {stage: query(stage_cells, frame) for stage, frame in lake.stages.items()}
        reasons, newest = query(quarantine_reasons, lake.quarantine), query(latest_manifest, lake.manifests)
        sizes, sample, outcomes = (query(cluster_sizes, lake.clusters), query(signal_sample, lake.silver),
                                   query(gate_outcomes, lake.gate_results))
        cells = {stage: future.result() for stage, future in staged.items()}
        quarantine, manifest = reasons.result(), newest.result()
        counts = row_counts(cells, quarantine)
        sections = [
            rows_section(counts, lake.versions),
            quarantine_section(quarantine),
            composition_section(cells, "origin"),
            composition_section(cells, "source"),
            removals_section(cells, quarantine, counts, manifest),
            clusters_section(sizes.result()),
            signals_section(sample.result()),
            gates_section(outcomes.result()),
            mixture_section(manifest),
        ]
    facts: dict[str, Any] = {"versions": lake.versions}
    for section in sections:
        facts.update(section.facts)
    return render_page(cfg, "".join(section.html for section in sections)), facts


def run(spark: SparkSession, cfg: Config, log: RunLog) -> dict[str, Any]:
    page, facts = build_report(spark, cfg)
    path = storage.join(cfg.report.dir, f"report-{log.run_id}.html")
    storage.write_text(path, page)
    storage.write_text(storage.join(cfg.report.dir, "latest.html"), page)
    log.artifact_text(page, f"report/report-{log.run_id}.html")
    log.artifact_json(facts, "report/facts.json")
    return {"report": str(path)}


STEP = Step(
    name="report", run=run, inputs=("bronze", "silver", "gold", "quarantine"), outputs=(),
    config_sections=("report",),
    help="Write the HTML run report (counts, quarantine reasons, composition, signal distributions, gates, "
         "manifest) from the tables.",
)


def main(argv: list[str] | None = None) -> None:
    from jobs.pipeline import STEPS  # the entry point learns the pipeline order from the registry

    job_main(STEP, argv, STEPS)


if __name__ == "__main__":
    main()
