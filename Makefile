# Two commands do all the set-up on a fresh machine:
#   make demo   - install what is missing, then start the main job on the embedded toy default
#   make test   - install what is missing, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pixpref-installed

.PHONY: demo test install bench lint

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the releases on this machine's disk, so nothing pulls a second torch
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Until the Gradio demo lands, the main job renders toy-world samples and samples the shipped base model.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/pixpref toyworld render --n 32 --seed 0 --out outputs/toy_world.png --overwrite
	HF_HUB_OFFLINE=1 $(VENV)/bin/pixpref generate --prompt "a red star" --num-images 8 --seed 0 --out outputs/red_star --overwrite

test: $(STAMP)
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_ppd_step.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_scorer.py

lint: $(STAMP)
	$(VENV)/bin/ruff check pixpref train tests benchmarks
