# cleanwell — set-up and entry points. Every target that runs code depends on `setup`,
# so `make demo` and `make test` work on a fresh clone with nothing installed by hand.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cleanwell-installed
ARGS   ?=

.PHONY: setup jars demo test test-all bench lint clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP) jars  ## create .venv, install cleanwell[dev], fetch the Delta Lake JARs with mvn

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install --quiet -c constraints.txt -e '.[spark,s3,dev]'
	$(BIN)/pip check
	touch $(STAMP)

jars: $(STAMP)  ## resolve io.delta JARs into ~/.m2 (idempotent; Spark then reads them offline)
	$(BIN)/cleanwell fetch-jars

demo: setup  ## run the whole pipeline on the bundled demo data; prints where results and the report are
	$(BIN)/cleanwell run --config conf/demo.yaml $(ARGS)

test: setup  ## run the test suite (fails on zero tests)
	$(BIN)/python -m pytest $(ARGS)

test-all: setup  ## the test suite including tests marked slow
	$(BIN)/python -m pytest -m "" $(ARGS)

bench: setup  ## run every benchmark in bench/ (writes bench/results/*.json)
	for b in bench/*.py; do n=$$(basename $$b .py); [ $$n = __init__ ] || $(BIN)/python -m bench.$$n || exit 1; done

lint: setup  ## ruff
	$(BIN)/ruff check jobs udfs tests bench dags notebooks

clean:  ## remove local lake, MLflow db and reports (keeps .venv)
	rm -rf lake mlflow.db mlartifacts reports spark-warehouse metastore_db derby.log
