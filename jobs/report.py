"""Report: one self-contained HTML file (plots inlined) of what went in and out of the lake.

Reads the tables only (never recomputes a signal): record counts per stage, quarantine and removal
reasons, composition by source and origin at each stage, signal distributions, the latest gate
outcomes and the latest mixture manifest. Written to ``report.dir`` as report-<run>.html and
latest.html, and logged to MLflow.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common import storage, tables
from jobs.common.config import Config
from jobs.common.runner import Step, job_main
from jobs.common.tracking import RunLog

SIGNAL_COLUMNS = ("n_tokens", "alpha_ratio", "duplicate_line_fraction", "gopher_dup_5gram_char_fraction",
                  "synthetic_probability", "watermark_z")
SAMPLE_ROWS = 50_000


def _plot(draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=100)
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, classes="t", escape=True) if len(frame) else "<p><i>none</i></p>"


def _maybe(spark: SparkSession, cfg: Config, name: str) -> tuple[DataFrame | None, int | None]:
    ref = tables.table_ref(cfg, name)
    version = tables.current_version(spark, ref)
    return (tables.read_table(spark, ref, version), version) if version is not None else (None, None)


def _composition(frames: dict[str, DataFrame], column: str) -> pd.DataFrame:
    parts = []
    for stage, frame in frames.items():
        counts = frame.groupBy(column).count().toPandas()
        parts.append(counts.assign(stage=stage))
    if not parts:
        return pd.DataFrame()
    return (pd.concat(parts).pivot_table(index=column, columns="stage", values="count", fill_value=0)
            .reindex(columns=list(frames)).astype(int))


def _removals(silver: DataFrame, quarantine: DataFrame | None, counts: dict[str, int],
              manifests: DataFrame | None) -> dict[str, int]:
    removed: dict[str, int] = {}
    if quarantine is not None:
        removed.update({f"quarantine:{r['reason']}": r["count"]
                        for r in quarantine.groupBy("reason").count().collect()})
    if "bronze" in counts:
        removed["exact_duplicate"] = counts["bronze"] - counts.get("silver", 0)
    for reason, column in (("near_duplicate", "duplicate_of"), ("semantic_duplicate", "semantic_duplicate_of")):
        if column in silver.columns:
            removed[reason] = silver.where(F.col(column).isNotNull()).count()
    if manifests is not None:
        latest = json.loads(manifests.orderBy(F.col("created_at").desc()).first()["manifest"])
        removed.update({f"mixture:{k}": v for k, v in latest.get("excluded_by_reason", {}).items()
                        if k not in ("near_duplicate", "semantic_duplicate")})
    return {k: int(v) for k, v in removed.items() if v}


def build_report(spark: SparkSession, cfg: Config) -> tuple[str, dict[str, Any]]:
    bronze, bronze_v = _maybe(spark, cfg, "bronze")
    silver, silver_v = _maybe(spark, cfg, "silver")
    gold, gold_v = _maybe(spark, cfg, "gold")
    quarantine, quarantine_v = _maybe(spark, cfg, "quarantine")
    gate_results, _ = _maybe(spark, cfg, "gate_results")
    manifests, _ = _maybe(spark, cfg, "manifests")
    sections: list[str] = []
    facts: dict[str, Any] = {"versions": {"bronze": bronze_v, "silver": silver_v, "gold": gold_v,
                                          "quarantine": quarantine_v}}

    stage_frames = {name: frame for name, frame in (("bronze", bronze), ("silver", silver), ("gold", gold))
                    if frame is not None}
    counts = {name: frame.count() for name, frame in stage_frames.items()}
    counts["quarantine"] = quarantine.count() if quarantine is not None else 0
    facts["rows"] = counts
    sections.append("<h2>Rows per table</h2>" + _table(pd.DataFrame(
        [{"table": k, "rows": v, "version": facts["versions"].get(k)} for k, v in counts.items()])))

    if quarantine is not None:
        reasons = quarantine.groupBy("source", "reason").count().orderBy("source", "reason").toPandas()
        by_reason = reasons.groupby("reason")["count"].sum().sort_values()
        sections.append("<h2>Quarantined records by reason</h2>" + _plot(
            lambda ax: (by_reason.plot.barh(ax=ax, color="#c0504d"), ax.set_xlabel("records"))) + _table(reasons))

    for column in ("origin", "source"):
        comp = _composition(stage_frames, column)
        if len(comp):
            sections.append(f"<h2>Documents by {column} at each stage</h2>" + _plot(
                lambda ax, c=comp: (c.plot.barh(ax=ax), ax.set_xlabel("documents")))
                + _table(comp.reset_index()))

    if silver is not None:
        removed = _removals(silver, quarantine, counts, manifests)
        facts["removed_by_reason"] = removed
        if removed:
            frame = pd.Series(removed).sort_values()
            sections.append("<h2>Documents removed or excluded, by reason</h2><p>Quarantine at ingest, duplicates "
                            "collapsed or marked in silver, and exclusions of the latest mixture.</p>" + _plot(
                                lambda ax: (frame.plot.barh(ax=ax, color="#8064a2"), ax.set_xlabel("documents")))
                            + _table(frame.rename_axis("reason").reset_index(name="documents")))

    clusters, _ = _maybe(spark, cfg, "clusters")
    if clusters is not None:
        sizes = clusters.select("cluster_id", "size").orderBy("cluster_id").toPandas().set_index("cluster_id")
        facts["cluster_sizes"] = {int(k): int(v) for k, v in sizes["size"].items()}
        sections.append("<h2>Embedding clusters: documents per cluster (silver)</h2>" + _plot(
            lambda ax: (sizes["size"].plot.bar(ax=ax, color="#4bacc6"), ax.set_ylabel("documents"))))

    present = [c for c in SIGNAL_COLUMNS if silver is not None and c in silver.columns]
    if present:
        sample = silver.select("origin", *present).limit(SAMPLE_ROWS).toPandas()
        for column in present:
            def draw(ax, col=column):
                for origin, part in sample.groupby("origin"):
                    ax.hist(part[col], bins=40, alpha=0.55, label=str(origin))
                ax.set_xlabel(col)
                ax.set_ylabel("documents")
                ax.legend()
            sections.append(f"<h3>Silver: {column} by origin</h3>" + _plot(draw))

    if gate_results is not None:
        latest = gate_results.groupBy("suite").agg(F.max("evaluated_at").alias("evaluated_at"))
        outcomes = (gate_results.join(latest, ["suite", "evaluated_at"])
                    .select("suite", "target", "expectation", "kwargs", "success", "evaluated_at")
                    .orderBy("suite", "expectation").toPandas())
        facts["gates_failed"] = int((~outcomes["success"]).sum())
        sections.append("<h2>Latest gate outcomes</h2>" + _table(outcomes))

    if manifests is not None:
        latest_manifest = json.loads(manifests.orderBy(F.col("created_at").desc()).first()["manifest"])
        facts["manifest"] = {k: latest_manifest[k] for k in ("mixture", "run_id", "tokens", "token_budget")}
        achieved = pd.DataFrame(latest_manifest["by_group"]).T.reset_index(names="group")
        if "target_tokens" in achieved:
            sections.append(f"<h2>Mixture “{html.escape(latest_manifest['mixture'])}”: tokens achieved vs target"
                            "</h2>" + _plot(lambda ax: (achieved.set_index("group")[["tokens", "target_tokens"]]
                                                        .plot.barh(ax=ax), ax.set_xlabel("tokens"))))
        clusters = pd.DataFrame(latest_manifest.get("by_cluster", {})).T
        if len(clusters) and "eligible_tokens" in clusters:
            clusters = clusters.reindex(sorted(clusters.index, key=int))[["eligible_tokens", "target_tokens", "tokens"]]
            sections.append("<h2>Cluster coverage: eligible silver tokens vs mixture target and achieved</h2>" + _plot(
                lambda ax: (clusters.plot.bar(ax=ax), ax.set_xlabel("cluster"), ax.set_ylabel("tokens")))
                + _table(clusters.reset_index(names="cluster")))
        sections.append("<h3>Manifest</h3><pre>" + html.escape(json.dumps(latest_manifest, indent=2)) + "</pre>")

    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cleanwell run report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table.t{{border-collapse:collapse;font-size:13px;margin:.5em 0}} table.t td,table.t th{{padding:3px 8px;
border-bottom:1px solid #ddd;text-align:left}} pre{{background:#f6f6f6;padding:1em;font-size:12px;overflow:auto}}
img{{max-width:100%}}</style></head><body>
<h1>cleanwell run report</h1><p>Generated {generated}. Lake: <code>{html.escape(str(tables.table_ref(cfg, 'bronze')))}
</code> (table versions in the first table).</p>
{''.join(sections)}
</body></html>"""
    return page, facts


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
    job_main(STEP, argv)


if __name__ == "__main__":
    main()
