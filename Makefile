# kvproj: `make run` trains the offline default pair, `make test` runs the tests. Each sets itself up.
VENV ?= .venv
PY := $(VENV)/bin/python
# GPU machines keep the CUDA torch pip picks (or the one already in the venv); others pin a local CPU build.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_PIN := $(if $(HAS_GPU),,-c constraints-cpu.txt)

.PHONY: setup run test test-fast test-heavy lint zoo doctor clean-runs preempt-matrix

setup: $(VENV)/.kvproj-installed

$(VENV)/.kvproj-installed: pyproject.toml constraints.txt constraints-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -c constraints.txt $(TORCH_PIN) -e '.[dev]'
	touch $@

# The main job: train the offline default pair (installs the zoo models it needs on first use); a second
# `make run` resumes an interrupted run (and does nothing more for a finished one).
run: setup
	$(PY) -m kvproj fit $(if $(wildcard checkpoints/default/last.ckpt),--ckpt_path last,)

zoo: setup
	$(PY) -m kvproj zoo install smollm2-135m-instruct

doctor: setup
	$(PY) -m kvproj doctor

# Fast tier + integration tier (SmolLM2-135M from the zoo). `make test-heavy` adds the larger zoo models.
test: zoo
	$(PY) -m pytest -m "not heavy" -q

test-fast: setup
	$(PY) -m pytest -m "not integration and not heavy and not faults" -q

test-heavy: setup
	$(PY) -m pytest -m heavy -q

# The full fault matrix (kill points x signals x checkpoint settings, 2 seeds; ~13 min on one CPU core):
# every cell must resume bitwise equal to an uninterrupted run. Results: docs/results/preempt_matrix.json.
preempt-matrix: setup
	$(PY) scripts/preempt_test.py --matrix --seed 0 --seed 1 --json docs/results/preempt_matrix.json

lint: setup
	$(PY) -m ruff check kvproj tests scripts
	$(PY) -m ruff format --check kvproj tests scripts
