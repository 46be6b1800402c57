"""Typed configuration: one YAML tree, loaded once, validated at the edge.

Load order: the bundled ``conf/base.yaml``, then each ``--config FILE`` in turn (deep-merged),
then ``key=value`` overrides (dotted keys, YAML-typed values). Every model forbids unknown keys,
so a typo fails fast with the dotted path of the bad key. Jobs receive a :class:`Config` and never
read raw dicts. Every key is documented by its ``Field(description=...)``; ``docs/config.md`` is
generated from these models (``cleanwell config --docs``) and a test keeps the two in sync.

Modules: :mod:`.settings` (the pipeline's sections and :class:`Config`), :mod:`.mixture` (mixture
files), :mod:`.loading` (files, overrides, errors), :mod:`.hashing` (what decides that a step is up to
date), :mod:`.docs` (the key reference). Import from this package; the split is an internal layout.
"""
from jobs.common.config.docs import config_docs
from jobs.common.config.hashing import OUTPUT_LOCATION, config_hash
from jobs.common.config.loading import load_config, parse_override
from jobs.common.config.mixture import (
    FPR_TARGETS,
    ExportConfig,
    MixtureConfig,
    MixtureFilters,
    RejectionSampling,
    SyntheticConfig,
    SyntheticValidation,
    load_mixture,
)
from jobs.common.config.settings import (
    DOCUMENT_FIELDS,
    ORIGINS,
    ClustersConfig,
    Config,
    DedupConfig,
    DetectConfig,
    EmbeddingsConfig,
    GatesConfig,
    IngestConfig,
    LakeConfig,
    Model,
    NearDupConfig,
    ProvenanceConfig,
    QualityConfig,
    ReportConfig,
    SampleConfig,
    SourceConfig,
    SparkConfig,
    TablesConfig,
    TokenizerConfig,
    TrackingConfig,
)

__all__ = [
    "DOCUMENT_FIELDS", "FPR_TARGETS", "ORIGINS", "OUTPUT_LOCATION", "ClustersConfig", "Config", "DedupConfig",
    "DetectConfig", "EmbeddingsConfig", "ExportConfig", "GatesConfig", "IngestConfig", "LakeConfig",
    "MixtureConfig", "MixtureFilters", "Model", "NearDupConfig", "ProvenanceConfig", "QualityConfig",
    "RejectionSampling", "ReportConfig", "SampleConfig", "SourceConfig", "SparkConfig", "SyntheticConfig",
    "SyntheticValidation", "TablesConfig", "TokenizerConfig", "TrackingConfig", "config_docs", "config_hash",
    "load_config", "load_mixture", "parse_override",
]
