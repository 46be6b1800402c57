"""cleanwell: guardrails against the slop loop for LLM training corpora (Spark + Delta)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


# Ranges, not pins: a Databricks or cluster install must keep the runtime's own pandas, pyarrow, mlflow
# and numpy where they fall in range. The exact set that was tested together lives in
# constraints.txt, which `make setup`, `make package` and CI install with (`pip install -c`).
INSTALL_REQUIRES = [
    "great-expectations>=1.3,<2",
    "mlflow>=2.16,<4",
    "pandas>=2.1,<4",
    "pyarrow>=15",
    "numpy>=1.26,<3",
    "scipy>=1.11",
    "scikit-learn>=1.4",
    "matplotlib>=3.8",
    "datasketch>=1.6,<3",
    "sentencepiece>=0.2",
    "xxhash>=3.4",
    "PyYAML>=6",
    "pydantic>=2.6,<3",
    "click>=8.1",
    "py3langid>=0.4.0",  # udfs/langid.py batches over its model arrays, _rowbase, _alias_pairs and _encode
    "fsspec>=2024.2",
    # zstd read to the exact byte of a break (pyarrow's codec drops its last 1 MiB buffer there).
    "zstandard>=0.22",
]

EXTRAS = {
    # Spark and Delta come with the platform on a cluster (Databricks Runtime, a Spark distribution);
    # a laptop, CI and the spark-submit launcher's driver install them from here.
    # delta-spark 4.4.0, not 4.4.1: Maven Central does not serve the 4.4.1 JAR here.
    "spark": ["pyspark>=4.0,<4.2", "delta-spark>=4.0,<4.5"],
    "s3": ["s3fs>=2024.2"],
    "dev": ["pytest>=8", "ruff>=0.6", "venv-pack2>=0.9", "moto[server]>=5", "hypothesis>=6.100"],
    "embeddings": ["sentence-transformers"],
}

setup(
    name="cleanwell",
    version="0.1.0",
    description="Data-curation guardrails against model collapse: provenance, filtering, mixing, gates, evidence.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    # conf/ (base.yaml, mixtures, expectation suites, log4j2) is package data of `jobs.conf`, read with
    # importlib.resources, so a wheel on --py-files or a Databricks library finds its defaults.
    packages=[*find_packages(include=["jobs", "jobs.*", "udfs", "udfs.*"]), "jobs.conf"],
    package_dir={"jobs.conf": "conf"},
    package_data={"jobs.conf": ["*.yaml", "*.properties", "mixtures/*.yaml", "expectations/*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["cleanwell = jobs.cli:main"]},
)
