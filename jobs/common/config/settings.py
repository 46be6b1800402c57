"""The pipeline's configuration tree: one typed section per concern, rooted at :class:`Config`.

Every model forbids unknown keys (a typo fails with the dotted path of the bad key) and documents each
key in its ``Field(description=...)``, from which ``docs/config.md`` is generated. Mixture files have
their own models (:mod:`jobs.common.config.mixture`).
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.common.config.hashing import OUTPUT_LOCATION, sections_hash

# A table, schema or catalog name cleanwell accepts: it is put into SQL (ALTER TABLE ... in catalog mode).
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

DOCUMENT_FIELDS = (
    "text", "url", "domain", "language", "license", "created_at", "crawled_at", "origin", "generator",
)
ORIGINS = ("human", "synthetic", "unknown")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkConfig(Model):
    master: str = Field("local[*]", description="Master URL used only when cleanwell builds the session itself "
                        "(laptop, CI). Under spark-submit or Databricks the active session is reused as is.")
    app_name: str = Field("cleanwell", description="Spark application name for sessions cleanwell builds.")
    jars: list[str] = Field(default_factory=list, description="Explicit JAR paths for a session cleanwell builds. "
                            "Empty: the Delta Lake JARs resolved by `cleanwell fetch-jars` from ~/.m2.")
    jar_sets: list[Literal["delta", "s3"]] = Field(
        default_factory=list, description="JAR sets added to a session cleanwell builds, besides Delta (always): "
        "`s3` is Hadoop S3A with the AWS SDK v2 modules it needs, and maps `s3://` to S3A too. Fetch them once "
        "with `cleanwell fetch-jars --with s3`. Ignored under spark-submit and Databricks (their JARs rule).")
    log_level: str = Field("ERROR", description="Spark log level (driver) for sessions cleanwell builds.")
    conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark properties for sessions cleanwell "
                                 "builds (merged over the local defaults in base.yaml).")

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()} \
            if isinstance(value, dict) else value


class LakeConfig(Model):
    root: str = Field("./lake", description="Folder (local path or URI such as s3://, abfss://, dbfs:/) that "
                      "holds every table as a Delta path, when `catalog` is empty.")
    catalog: str | None = Field(None, description="`catalog.schema` (Unity Catalog) or `schema` (Hive metastore). "
                                "When set, tables are read and written by name instead of by path.")

    @field_validator("catalog")
    @classmethod
    def _catalog_identifiers(cls, value: str | None) -> str | None:
        if value is not None and not all(IDENTIFIER.fullmatch(part) for part in value.split(".")[:3]) \
                or value is not None and value.count(".") > 1:
            raise ValueError("must be `schema` or `catalog.schema`, each a SQL identifier (letters, digits, _; not "
                             "starting with a digit): table names are put into SQL statements")
        return value


class TablesConfig(Model):
    bronze: str = Field("bronze_documents", description="Raw documents with provenance, one row per (source, doc_id).")
    quarantine: str = Field("quarantine", description="Rejected input records with reason, file and line.")
    silver: str = Field("silver_documents", description="One row per distinct doc_id with signal columns.")
    gold: str = Field("gold_mixture", description="Sampled training mixtures (column `mixture` names each).")
    manifests: str = Field("gold_manifests", description="One row per published mixture: inputs, config hash, counts.")
    gate_results: str = Field("gate_results", description="Every expectation evaluated by every gate, pass or fail.")
    pipeline_runs: str = Field("pipeline_runs", description="Successful step runs with input/output versions "
                               "(drives resume).")
    clusters: str = Field("silver_clusters", description="One row per embedding cluster: size and centroid.")
    exclusions: str = Field("mixture_exclusions", description="One row per document a mixture excluded: "
                            "mixture, run_id, reason, and the value, threshold and detail that excluded it.")
    band_index: str = Field("minhash_band_index", description="Published LSH band hashes of silver documents; "
                            "new batches are deduplicated against it incrementally.")

    @field_validator("*")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not IDENTIFIER.fullmatch(value):
            raise ValueError(f"{value!r} is not a table name: use letters, digits and _ (not starting with a digit); "
                             "the name is a folder under lake.root and, with lake.catalog, part of SQL statements")
        return value


class TrackingConfig(Model):
    uri: str | None = Field(None, description="MLflow tracking URI. Unset (null): the MLFLOW_TRACKING_URI "
                            "environment variable, else `sqlite:///mlflow.db`. A value given in a config file "
                            "or on the command line wins over the environment variable.")
    experiment: str = Field("cleanwell", description="MLflow experiment name.")
    artifact_root: str = Field("./mlartifacts", description="Artifact location given to the experiment when "
                               "cleanwell creates it (ignored for an existing experiment). With a tracking "
                               "server (`http(s)://`, `databricks`) a local path is ignored and the server "
                               "chooses (proxied artifacts: `mlflow server --artifacts-destination`); a URI "
                               "such as `s3://bucket/mlflow` is used as given.")
    registry_uri: str | None = Field(None, description="MLflow model registry URI (e.g. `databricks-uc`, or a "
                                     "second server). Unset: the MLFLOW_REGISTRY_URI environment variable, "
                                     "else the tracking store.")


class ProvenanceConfig(Model):
    ai_cutoff_date: dt.date = Field(dt.date(2022, 11, 30), description="Documents created before this date are "
                                    "`pre_ai_archive` (ChatGPT's public release by default).")
    infer_human_before_cutoff: bool = Field(True, description="A document of undeclared origin created before the "
                                            "cutoff becomes `human` with provenance_method `date-inferred`.")
    synthetic_source_types: list[str] = Field(
        default_factory=lambda: ["trainedAlgorithmicMedia", "compositeSynthetic", "algorithmicMedia"],
        description="IPTC/C2PA digital-source-type values that declare a document AI-generated when found in "
                    "metadata key `digital_source_type`.")


class SourceConfig(Model):
    name: str = Field(description="Source name stored in every row's `source` column.")
    path: str = Field(description="File or folder (read recursively) with the source's records.")
    format: Literal["jsonl", "parquet", "csv", "text"] = Field(description="jsonl: one JSON object a line; parquet; "
                                                              "csv (header row); text: one document per .txt file.")
    glob: str | None = Field(None, description="File-name filter inside `path` (e.g. `*.jsonl.gz`): every file it "
                             "matches is read as `format` (compression by suffix or content). Unset: every file is "
                             "listed, those whose suffix the format reads (`.jsonl`/`.ndjson`/`.json`, `.csv`, "
                             "`.txt`, each also `.gz`/`.zst`/`.bz2`/`.xz`; `.parquet`) are read, the rest counted as "
                             "skipped (docs/ingest.md).")
    columns: dict[str, str] = Field(default_factory=dict, description="Document field -> input column, for fields "
                                    "whose input name differs (e.g. `text: body`).")
    defaults: dict[str, str] = Field(default_factory=dict, description="Document field -> constant used when the "
                                     "record has no value (e.g. `origin: human`, `license: CC-BY-SA-4.0`).")
    archive: bool = Field(False, description="The source is a pre-AI archive: every document is `pre_ai_archive` "
                          "and, if its origin is undeclared, `human` by provenance_method `archive`.")
    csv_delimiter: str = Field(",", description="Field delimiter for format csv.")

    @field_validator("columns", "defaults")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(DOCUMENT_FIELDS))
        if unknown:
            raise ValueError(f"unknown document field(s) {unknown}; known: {list(DOCUMENT_FIELDS)}")
        return value

    @field_validator("defaults")
    @classmethod
    def _known_origin(cls, value: dict[str, str]) -> dict[str, str]:
        if "origin" in value and value["origin"] not in ORIGINS:
            raise ValueError(f"defaults.origin must be one of {list(ORIGINS)}, got {value['origin']!r}")
        return value


class IngestConfig(Model):
    sources: list[SourceConfig] = Field(default_factory=list, description="Input sources (see the source keys).")
    max_text_bytes: int = Field(1_000_000, gt=0, description="Documents whose normalised UTF-8 text is larger are "
                                "quarantined as `text_too_large`.")
    min_text_chars: int = Field(1, ge=1, description="Documents with fewer characters after normalisation are "
                                "quarantined as `empty_text`.")
    raw_preview_chars: int = Field(2000, ge=0, description="How much of a rejected record the quarantine row keeps.")
    max_record_bytes: int = Field(64 << 20, gt=0, description="A JSONL line, CSV field or text file larger than this "
                                  "is quarantined as `text_too_large` without being held in memory.")
    split_bytes: int = Field(128 << 20, ge=1024, description="Uncompressed JSONL files larger than this are read as "
                             "byte ranges in parallel (line numbers stay exact); also the most bytes one read task "
                             "packs small files into.")
    batch_rows: int = Field(2000, ge=1, description="Records per Arrow batch a read task hands to Spark (a batch is "
                            "also cut at 64 MiB of text), which bounds a task's memory.")

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, value: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {dupes}")
        return value


class DedupConfig(Model):
    exact: bool = Field(True, description="Collapse documents with the same doc_id (same normalised text) to one "
                        "silver row, keeping the best provenance.")


class NearDupConfig(Model):
    """MinHash-LSH near-duplicate detection (jobs/neardup.py). Results from different settings are not
    comparable, so every run records these in MLflow and in the silver table's properties."""

    enabled: bool = Field(True, description="Run near-duplicate detection in the neardup step.")
    shingle: Literal["word", "char"] = Field("word", description="Shingle unit: word n-grams or character n-grams.")
    ngram: int = Field(5, ge=1, description="Shingle size (words or characters).")
    num_perm: int = Field(128, ge=16, description="MinHash permutations per signature.")
    seed: int = Field(1, description="Seed of the MinHash permutations (datasketch-compatible).")
    scheme: Literal["affine32", "affine64", "legacy"] = Field(
        "affine32", description="datasketch permutation scheme; affine32 stores 32-bit values (half the size).")
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity at or above which two documents "
                             "are near duplicates (verified on candidate pairs).")
    candidate_threshold: float = Field(0.65, gt=0, le=1, description="Jaccard threshold the LSH bands/rows are "
                                       "tuned for; below `threshold` so banding misses few true pairs.")
    verification: Literal["exact", "signature"] = Field("exact", description="Verify candidate pairs by exact "
                                                        "shingle Jaccard or by the MinHash estimate.")
    max_bucket_size: int = Field(1000, ge=2, description="Band buckets larger than this link each member only "
                                 "to the bucket's first member (protects against giant buckets).")
    false_positive_weight: float = Field(0.5, ge=0, le=1, description="Weight of false positives when choosing "
                                         "bands and rows (false negatives get 1 minus this).")


class TokenizerConfig(Model):
    """The sentencepiece tokenizer trained inside the pipeline (jobs/token_counts.py); its tokens are the
    `n_tokens` that mixture budgets count."""

    vocab_size: int = Field(8000, ge=100, description="Upper bound on the vocabulary (a small corpus yields "
                            "fewer pieces).")
    model_type: Literal["unigram", "bpe"] = Field("unigram", description="sentencepiece model type.")
    train_sample: int = Field(20000, ge=10, description="Documents sampled to train it; pre-AI archive and human "
                              "documents first (the reference distribution).")
    seed: int = Field(0, description="Training seed (same texts and seed give the same model).")


class DetectConfig(Model):
    """Synthetic-text detectors (jobs/detect.py, `cleanwell train-detector`, `cleanwell eval-detector`)."""

    training_files: list[str] = Field(
        default_factory=lambda: ["data/m4/wikipedia_llama2.jsonl", "data/m4/wikihow_llama2.jsonl"],
        description="M4-format JSONL files (`human_text`, `machine_text` per line) of labelled training pairs.")
    use_declared_origin: bool = Field(True, description="Also train on silver documents whose origin was "
                                      "declared human or synthetic.")
    max_training_documents: int = Field(20000, ge=10, description="Cap on training documents (deterministic "
                                        "sample, balanced by label).")
    training_processes: int = Field(1, ge=1, description="Classifier fits the training runs at once, in "
                                    "forked processes on the driver (the bundle is the same for any value; "
                                    "each running fit holds ~1 GiB at 20,000 training documents: 2 took a "
                                    "1 M run's peak to 7.93 GiB).")
    registered_model: str = Field("cleanwell-synthetic-detector", description="MLflow registered model name.")
    alias: str = Field("champion", description="Registry alias the detect step sets and scoring loads.")
    seed: int = Field(0, description="Seed of the cross-fitting folds.")
    watermark_key: str = Field("cleanwell", description="Secret key of the green-list watermark "
                               "(Kirchenbauer et al., 2023) to test for.")
    watermark_gamma: float = Field(0.25, gt=0, lt=1, description="Green-list fraction of the vocabulary.")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "watermark_z_threshold" in data:
            raise ValueError("detect.watermark_z_threshold moved to the mixture config as "
                             "filters.watermark_z_threshold: detect writes watermark_z, the sampling job decides")
        return data


class QualityConfig(Model):
    """Quality signals (scores only; thresholds on them live in the mixture config)."""

    heuristics: bool = Field(True, description="Compute the Gopher, C4 and FineWeb signal columns "
                             "(docs/quality.md lists them).")
    language_id: bool = Field(True, description="Detect each document's language (`detected_language`, "
                              "`language_confidence`) with py3langid's bundled model.")
    language_max_chars: int = Field(2000, ge=1, description="Characters of each document language id reads.")


class EmbeddingsConfig(Model):
    """Document embeddings (jobs/embed.py)."""

    backend: Literal["hashed-tfidf", "sentence-transformers"] = Field(
        "hashed-tfidf", description="hashed-tfidf needs no weights (word n-gram TF-IDF, hashed, randomly "
        "projected); sentence-transformers needs the `embeddings` extra and `model_path`.")
    dim: int = Field(256, ge=8, description="Embedding dimension (hashed-tfidf).")
    n_features: int = Field(2**18, ge=1024, description="Hashed TF-IDF feature space size.")
    ngram_max: int = Field(2, ge=1, le=3, description="Longest word n-gram of the TF-IDF features.")
    seed: int = Field(0, description="Seed of the random projection.")
    fit_sample: int = Field(20000, ge=10, description="Documents sampled (deterministically) to fit the IDF "
                            "weights; human and pre-AI documents are preferred.")
    model_path: str | None = Field(None, description="Local folder of a sentence-transformers model (never "
                                   "downloaded).")


class ClustersConfig(Model):
    """KMeans clusters, semantic dedup (SemDeDup) and diversity metrics (jobs/embed.py)."""

    k: int = Field(8, ge=2, description="Number of KMeans clusters (scikit-learn, fitted on `fit_sample`).")
    max_iter: int = Field(30, ge=1, description="KMeans iterations.")
    seed: int = Field(7, description="KMeans seed.")
    fit_sample: int = Field(20000, ge=10, description="Embeddings KMeans is fitted on, taken in doc_id-hash order "
                            "(so the clusters do not depend on partitioning); every document is then assigned "
                            "to its nearest centroid.")
    semdedup_threshold: float = Field(0.90, gt=0, le=1, description="Cosine similarity at or above which two "
                                      "documents of a cluster are semantic duplicates (SemDeDup).")
    semdedup_partition_size: int = Field(
        10000, ge=100, description="SemDeDup compares every pair of documents within a group (cost: the square "
        "of its size). Up to `k` times this many candidates the groups are the KMeans clusters; above, a finer "
        "KMeans of ceil(candidates / this) centroids splits them (as the SemDeDup paper does). Pairs in "
        "different groups are not compared.")
    vendi_sample: int = Field(2000, ge=10, description="Documents sampled for the Vendi-score estimate.")
    distinct_n_sample: int = Field(5000, ge=10, description="Documents sampled for distinct-n.")


class SampleConfig(Model):
    mixture: str = Field("conf/mixtures/demo.yaml", description="Mixture config file (see docs/mixtures.md).")
    manifest_dir: str = Field("", description="Folder for manifest JSON files; empty: `<lake.root>/manifests`, so "
                              "the manifests follow the lake.", json_schema_extra=OUTPUT_LOCATION)

class GatesConfig(Model):
    suites_dir: str = Field("conf/expectations", description="Folder of expectation suites, one YAML per table.")
    enabled: bool = Field(True, description="Run the gates. Off is for debugging only: publishes are unchecked.")
    result_format: Literal["BOOLEAN_ONLY", "BASIC", "SUMMARY"] = Field(
        "BOOLEAN_ONLY", description="GX result format of a passing validation. BOOLEAN_ONLY records pass/fail "
        "only and is ~4x cheaper on Spark; BASIC also records observed values (counts, a few unexpected values) "
        "in gate_results for every expectation. A failing validation is always rerun with BASIC, so a "
        "failure says what was found.")
    local_max_rows: int = Field(
        20000, ge=0, description="A frame with at most this many rows is validated by GX's pandas engine on a "
        "copy in the driver (one collect) instead of GX's Spark engine (~20 Spark jobs a suite set): same "
        "results, ~5 s less per gate on the demo. Frames with a NaN in a float column, or suites with a "
        "string `row_condition`, always use Spark. 0: always Spark.")


class ReportConfig(Model):
    dir: str = Field("./reports", description="Folder for the HTML run reports.", json_schema_extra=OUTPUT_LOCATION)


class CollapseLabConfig(Model):
    """The model-collapse lab (`cleanwell collapse-lab`, jobs/collapse_lab.py, docs/collapse_lab.md)."""

    human_files: list[str] = Field(
        default_factory=lambda: ["data/m4/wikipedia_llama2.jsonl", "data/m4/wikihow_llama2.jsonl"],
        description="M4-format JSONL files whose `human_text` is the real data (machine texts are ignored).")
    generations: int = Field(10, ge=1, le=100, description="Generations trained after generation 0 (the model "
                             "trained on human text).")
    temperatures: list[float] = Field(default_factory=lambda: [0.7, 1.0], min_length=1,
                                      description="Sampling temperatures; every regime runs at each.")
    regimes: list[Literal["replace", "accumulate", "curated", "curated_feedback"]] = Field(
        default_factory=lambda: ["replace", "accumulate", "curated", "curated_feedback"], min_length=1,
        description="How each generation's training set is built (docs/collapse_lab.md).")
    held_out_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the human documents held out for "
                                     "perplexity and the detector's evaluation; never trained on.")
    sequence_tokens: int = Field(96, ge=8, description="Tokens per document: human texts are cut into pieces of "
                                 "this length, and every sample has it.")
    documents_per_generation: int = Field(400, ge=10, description="Samples each generation's model writes (and "
                                          "the cap on human training pieces, so both sides have the same size).")
    vocab_size: int = Field(2000, ge=100, description="Sentencepiece vocabulary trained on the human training "
                            "pieces.")
    lm_order: int = Field(3, ge=1, le=5, description="Order of the interpolated Kneser-Ney n-gram model.")
    synthetic_cap: float = Field(0.2, ge=0, lt=1, description="Curated regimes: the largest synthetic share of a "
                                 "training set's tokens.")
    detector_target_fpr: float = Field(0.01, gt=0, lt=1, description="Curated regimes: synthetic documents the "
                                       "detector scores at or above its threshold at this false-positive rate on "
                                       "held-out human text are removed.")
    best_of: int = Field(2, ge=2, description="curated_feedback: candidates sampled per kept sample; the one the "
                         "verifier (the detector) finds most human-like is kept.")
    tail_quantile: float = Field(0.1, gt=0, le=1, description="Tail n-grams: reference n-grams whose count is in "
                                 "this bottom share of the count distribution (udfs/collapse.py).")
    tail_ngram: int = Field(2, ge=1, le=4, description="n of the tail n-grams and distinct-n.")
    seed: int = Field(0, description="Seed of the split, the samplers and the detector.")
    output_dir: str = Field("./reports/collapse_lab", description="Folder for the figures, the HTML report and "
                            "results.json (and, with engine spark, the lakes under `spark/`).",
                            json_schema_extra=OUTPUT_LOCATION)
    engine: Literal["numpy", "spark"] = Field("numpy", description="Curated regimes: `numpy` curates in one "
                                              "process with the functions the steps call; `spark` runs the "
                                              "pipeline's steps on a Delta lake per regime x temperature for "
                                              "every generation (minutes per generation).")


class Config(Model):
    spark: SparkConfig = SparkConfig()
    lake: LakeConfig = LakeConfig()
    tables: TablesConfig = TablesConfig()
    tracking: TrackingConfig = TrackingConfig()
    provenance: ProvenanceConfig = ProvenanceConfig()
    ingest: IngestConfig = IngestConfig()
    dedup: DedupConfig = DedupConfig()
    neardup: NearDupConfig = NearDupConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    detect: DetectConfig = DetectConfig()
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    clusters: ClustersConfig = ClustersConfig()
    quality: QualityConfig = QualityConfig()
    sample: SampleConfig = SampleConfig()
    gates: GatesConfig = GatesConfig()
    report: ReportConfig = ReportConfig()
    collapse_lab: CollapseLabConfig = CollapseLabConfig()

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named sections; a step reruns when the hash of its sections changes."""
        return sections_hash(self, sections)
