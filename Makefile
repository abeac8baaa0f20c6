PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: demo test lint install dev bench flink clean

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "python3.11 not found; set PY=/path/to/python3.11"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[kafka,postgres]'
	@touch $(STAMP)

$(DEVSTAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,train,confluent]'
	@touch $(DEVSTAMP)

install: $(STAMP)

dev: $(DEVSTAMP)

demo: $(STAMP)
	$(BIN)/streamml demo

test: $(DEVSTAMP)
	$(BIN)/python -m pytest

lint: $(DEVSTAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/streamml bench error-count --events 2000000 --accounts 100000

# Apache Flink (PyFlink) for the Flink SQL baseline of `streamml bench error-count --flink`,
# in its own environment: it pins pyarrow and pandas versions the project does not use.
flink: .venv-flink/.installed

.venv-flink/.installed:
	$(PY) -m venv .venv-flink
	.venv-flink/bin/python -m pip install -q --upgrade pip
	.venv-flink/bin/python -m pip install -q 'apache-flink==2.3.0'
	@touch .venv-flink/.installed

clean:
	rm -rf $(VENV) .venv-flink .demo
