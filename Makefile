# `make test` and `make run` build their own virtual environment, so a fresh clone needs only
# Python >= 3.11 and pip.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED ?= ../shared/data
DATA ?= pneumoniamnist
RUN_ARGS ?=

.PHONY: install test lint run bench clean results headline chromium

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-install only when the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/mypy

test: lint chromium
	$(PY) -m pytest -q

# The report test opens report.html in headless Chromium (Debian's package).
chromium:
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

run: $(STAMP)
	$(VENV)/bin/lightlayers run configs/cpu-study.yaml --data $(DATA) $(RUN_ARGS)

# The Results tables of docs/results.md, rebuilt from the committed files in results/;
# `make results RESULTS_ARGS=--check` only checks that they match.
RESULTS_ARGS ?=
results: $(STAMP)
	$(PY) scripts/results.py build $(RESULTS_ARGS)

# The tuned headline: hours of CPU per image source, resumable (scripts/headline.sh).
headline: $(STAMP)
	scripts/headline.sh pmnist
	scripts/headline.sh jpeg

bench: $(STAMP)
	$(PY) benchmarks/bench_cpu.py
	$(PY) benchmarks/bench_precision.py
	$(PY) benchmarks/bench_deploy.py --threads 1
	$(PY) benchmarks/bench_threads.py
	$(PY) benchmarks/bench_report.py
	$(PY) benchmarks/bench_scale.py --json benchmarks/results/scale.json

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
