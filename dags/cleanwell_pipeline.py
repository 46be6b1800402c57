"""Airflow DAG: the cleanwell pipeline, one task per step, each the same job code as `cleanwell <step>`.

Steps skip themselves when their inputs and config are unchanged, so retries and re-runs after a
failure redo only what is missing. Airflow Variables:
- ``cleanwell_config``: config YAML passed with --config (default: conf/base.yaml).
- ``cleanwell_command``: how to launch a step (default ``cleanwell``, the console script). For a
  cluster, e.g. ``spark-submit --master yarn --py-files /opt/cleanwell/cleanwell.zip
  /opt/cleanwell/jobs/submit.py``; the step name and arguments are appended.
Install with ``pip install 'cleanwell[airflow]'`` on the Airflow workers.
"""
from __future__ import annotations

import datetime as dt

from airflow import DAG

try:  # Airflow 3 moved BashOperator to the standard provider
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

STEPS = ["ingest", "dedup", "quality", "neardup", "tokenize", "detect", "embed", "sample", "report"]
COMMAND = ("{{ var.value.get('cleanwell_command', 'cleanwell') }} %s "
           "--config {{ var.value.get('cleanwell_config', 'conf/base.yaml') }}")

with DAG(
    dag_id="cleanwell_pipeline",
    description="Provenance, filtering, mixing and gates before a training run",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # steps write the same Delta tables
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=5)},
    tags=["cleanwell", "data-quality"],
) as dag:
    previous = None
    for step in STEPS:
        task = BashOperator(task_id=step, bash_command=COMMAND % step)
        if previous is not None:
            previous >> task
        previous = task
