"""Runs inside the Airflow venv (.venv-airflow), started by tests/test_airflow.py as a subprocess: the
test venv and the Airflow venv cannot share packages. Prints its result as one stdout line:
``RESULT {json}``.

    python tests/airflow_harness.py graph DAGS_FOLDER
        import errors, and each DAG's tasks: upstream ids, retries, execution_timeout, operator classes
    python tests/airflow_harness.py run DAGS_FOLDER DAG_ID RUNS.json [--retry-delay S] [--retries N]
        one dag.test() per run conf in RUNS.json (a list); per run, each task's state and try_number

AIRFLOW_HOME must point at a migrated database (`airflow db migrate`); connections come from
AIRFLOW_CONN_* environment variables.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json

RESULT_MARKER = "RESULT "


def load(folder: str):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=folder)


def graph(args: argparse.Namespace) -> dict:
    bag = load(args.dags)
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {task.task_id: {
            "upstream": sorted(task.upstream_task_ids),
            "retries": task.retries,
            "execution_timeout": task.execution_timeout.total_seconds() if task.execution_timeout else None,
            "classes": [cls.__name__ for cls in type(task).__mro__],
        } for task in dag.tasks}
    return {"import_errors": {path: str(error) for path, error in bag.import_errors.items()}, "dags": dags}


def run(args: argparse.Namespace) -> dict:
    bag = load(args.dags)
    if bag.import_errors:
        return {"import_errors": {path: str(error) for path, error in bag.import_errors.items()}}
    dag = bag.dags[args.dag_id]
    for task in dag.tasks:
        if args.retry_delay is not None:  # the DAG's 5-minute delay would make dag.test() wait that long
            task.retry_delay = dt.timedelta(seconds=args.retry_delay)
            task.retry_exponential_backoff = False
        if args.retries is not None:
            task.retries = args.retries
    with open(args.runs) as handle:
        confs = json.load(handle)
    runs = []
    for conf in confs:
        dag_run = dag.test(run_conf=conf)
        runs.append({"state": str(dag_run.state), "run_id": dag_run.run_id, "tasks": {
            ti.task_id: {"state": str(ti.state), "try_number": ti.try_number} for ti in dag_run.get_task_instances()}})
    return {"runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    graph_parser = commands.add_parser("graph")
    graph_parser.add_argument("dags")
    run_parser = commands.add_parser("run")
    run_parser.add_argument("dags")
    run_parser.add_argument("dag_id")
    run_parser.add_argument("runs")
    run_parser.add_argument("--retry-delay", type=float)
    run_parser.add_argument("--retries", type=int)
    args = parser.parse_args()
    result = graph(args) if args.command == "graph" else run(args)
    print("\n" + RESULT_MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
