# Two commands do all set-up on a fresh Debian machine:
#   make demo   -- runs the main job end to end on the built-in synthetic dataset
#   make test   -- runs the test suite
# Each creates .venv, installs the Python requirements and the missing Debian packages (apt-get when
# running as root; otherwise it stops and says what to install). A second run skips what is installed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

# Debian packages: <command that proves it is installed>:<package>
DEMO_DEBS := ffmpeg:ffmpeg ffprobe:ffmpeg
TEST_DEBS := $(DEMO_DEBS) slurmctld:slurm-wlm munged:munge

.PHONY: demo test setup system-demo system-test clean-demo

demo: system-demo $(STAMP)
	$(VENV)/bin/avsiam demo --out $(DEMO_DIR)

# One OpenMP thread per process: the tests start several processes (ranks, workers) on small CI
# machines, where more threads only make them wait for each other.
test: system-test $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest $(PYTEST_ARGS)

setup: system-test $(STAMP)

system-demo:
	@DEBS="$(DEMO_DEBS)" REQUIRED="$(DEMO_DEBS)" sh cluster/setup/debian_packages.sh

# SLURM and munge are optional for tests: without root they are reported, and the SLURM tests skip.
system-test:
	@DEBS="$(TEST_DEBS)" REQUIRED="$(DEMO_DEBS)" sh cluster/setup/debian_packages.sh

$(STAMP): requirements.txt requirements-deepspeed.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-build-isolation -r requirements-deepspeed.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	@touch $(STAMP)

clean-demo:
	rm -rf $(DEMO_DIR)
