"""cleanwell: guardrails against the slop loop for LLM training corpora (Spark + Delta)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _yaml_files(folder: str) -> list[str]:
    return [str(p.relative_to(HERE)) for p in sorted((HERE / folder).glob("*.yaml"))]

# Pinned as a set: these versions install together with a clean `pip check`
# and were exercised together (pandas UDFs, GX on Spark DataFrames, MLflow on sqlite).
# delta-spark 4.4.0, not 4.4.1: Maven Central does not serve the 4.4.1 JAR here.
INSTALL_REQUIRES = [
    "pyspark==4.1.4",
    "delta-spark==4.4.0",
    "great-expectations==1.24.1",
    "mlflow==3.17.2",
    "pandas==3.1.1",
    "pyarrow==25.0.1",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "scikit-learn==1.9.1",
    "matplotlib==3.11.2",
    "datasketch==2.0.0",
    "sentencepiece==0.2.3",
    "xxhash==4.1.0",
    "PyYAML==6.0.4",
    "pydantic==2.14.4",
    "click==8.5.1",
    "py3langid==0.4.0",
]

EXTRAS = {
    "dev": ["pytest==9.2.0", "ruff==0.17.6"],
    "airflow": ["apache-airflow==3.3.2"],
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
    packages=find_packages(include=["jobs", "jobs.*", "udfs", "udfs.*"]),
    # conf/ ships with the wheel so `spark-submit` and Databricks installs find the defaults.
    data_files=[
        ("share/cleanwell/conf", _yaml_files("conf")),
        ("share/cleanwell/conf/mixtures", _yaml_files("conf/mixtures")),
        ("share/cleanwell/conf/expectations", _yaml_files("conf/expectations")),
    ],
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["cleanwell = jobs.cli:main"]},
)
