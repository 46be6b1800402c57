# cleanwell — set-up and entry points. Every target that runs code depends on `setup`,
# so `make demo` and `make test` work on a fresh clone with nothing installed by hand.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cleanwell-installed
AIRFLOW_VENV  ?= .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.airflow-installed
ARGS   ?=

.PHONY: setup jars demo test test-all bench lint clean help package airflow

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP) jars  ## create .venv, install cleanwell[dev], fetch the Delta Lake JARs with mvn

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install --quiet -c constraints.txt -e '.[spark,s3,dev]'
	$(BIN)/pip check
	touch $(STAMP)

# Airflow and its Spark provider get their own venv: airflow-core 3.3.2 needs fastapi<0.137 (mlflow pins
# 0.165.0) and the provider's pyspark-client would overwrite .venv's pyspark 4.1.4. Its tasks run .venv's
# spark-submit (SPARK_HOME = .venv's pyspark), so Spark is installed once.
airflow: setup $(AIRFLOW_STAMP)  ## create .venv-airflow: Airflow 3 + the apache-spark provider (dags/, tests/test_airflow.py)

$(AIRFLOW_STAMP): constraints-airflow.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet --upgrade pip wheel setuptools
	$(AIRFLOW_VENV)/bin/pip install --quiet -c constraints-airflow.txt apache-airflow apache-airflow-providers-apache-spark
	$(AIRFLOW_VENV)/bin/pip check
	touch $@

jars: $(STAMP)  ## resolve the Delta and S3A (s3 set) JARs into ~/.m2 (idempotent; Spark then reads them offline)
	$(BIN)/cleanwell fetch-jars --with s3

# --- make package: what a cluster needs, in dist/ (see README "Running on a Spark cluster") ---------
VERSION   := $(shell sed -n 's/^    version="\(.*\)",/\1/p' setup.py)
WHEEL     := dist/cleanwell-$(VERSION)-py3-none-any.whl
PYZIP     := dist/cleanwell-$(VERSION).zip
ENV_PACK  := dist/cleanwell-env.tar.gz
ENV_BUILD := dist/.env-build
CODE      := setup.py $(wildcard jobs/*.py jobs/common/*.py udfs/*.py conf/*.yaml conf/*/*.yaml conf/*.properties)

package: $(WHEEL) $(PYZIP) $(ENV_PACK) dist/jars dist/cleanwell_submit.py dist/conf/demo.yaml  ## build dist/: wheel, packed env, Delta JARs, launcher, demo data

$(WHEEL): $(CODE) | setup
	rm -f dist/cleanwell-*.whl
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation -w dist .

# The wheel again under a .zip name, for spark-submit --py-files: Spark puts only .zip, .egg and .jar
# py-files on the executors' sys.path (PACKAGE_EXTENSIONS in pyspark/core/context.py); a .whl reaches
# the driver alone. The .whl is for pip (Databricks libraries, nodes that install it).
$(PYZIP): $(WHEEL)
	cp $< $@

# The executors' (and the launching driver's) Python: every third-party dependency at the tested pins,
# without pyspark and delta-spark (the cluster's Spark provides them) and without cleanwell itself
# (it travels as the wheel, so a code change needs no new environment). Rebuilt when the pins change.
$(ENV_PACK): setup.py constraints.txt | $(WHEEL)
	rm -rf $(ENV_BUILD) $@
	$(PYTHON) -m venv $(ENV_BUILD)
	$(ENV_BUILD)/bin/pip install --quiet -c constraints.txt $(WHEEL)
	$(ENV_BUILD)/bin/pip uninstall --quiet --yes cleanwell
	$(ENV_BUILD)/bin/pip check
	$(BIN)/venv-pack --quiet --prefix $(ENV_BUILD) --output $@ --compress-level 1
	rm -rf $(ENV_BUILD)

# Delta's JARs, and in jars/s3/ Hadoop S3A's (for a cluster whose Spark lacks them: add them to --jars).
dist/jars: $(STAMP) | jars
	mkdir -p $@/s3
	cp $$($(BIN)/python -c "from jobs.common.session import delta_jar_paths as p; print(*p())") $@/
	cp $$($(BIN)/python -c "from jobs.common.session import jar_set_paths as p; print(*p('s3'))") $@/s3/

dist/cleanwell_submit.py: jobs/submit.py
	mkdir -p dist && cp $< $@

# The demo, laid out as in the repository so `--config conf/demo.yaml` works from inside dist/.
dist/conf/demo.yaml: conf/demo.yaml $(wildcard data/demo/sources/*/*) $(wildcard data/m4/*)
	rm -rf dist/data && mkdir -p dist/conf dist/data/demo
	cp -r data/demo/sources dist/data/demo/ && cp -r data/m4 dist/data/
	cp conf/demo.yaml $@

demo: setup  ## run the whole pipeline on the bundled demo data; prints where results and the report are
	$(BIN)/cleanwell run --config conf/demo.yaml $(ARGS)

test: setup airflow  ## run the test suite (fails on zero tests)
	$(BIN)/python -m pytest $(ARGS)

test-all: setup airflow  ## the test suite including tests marked slow
	$(BIN)/python -m pytest -m "" $(ARGS)

bench: setup  ## run every benchmark in bench/ (writes bench/results/*.json)
	for b in bench/*.py; do n=$$(basename $$b .py); [ $$n = __init__ ] || $(BIN)/python -m bench.$$n || exit 1; done

lint: setup  ## ruff
	$(BIN)/ruff check jobs udfs tests bench dags notebooks

clean:  ## remove local lake, MLflow db, reports and dist/ (keeps .venv)
	rm -rf lake mlflow.db mlartifacts reports spark-warehouse metastore_db derby.log dist
