# Two commands do all the set-up on a fresh machine:
#   make demo   - install what is missing, then start the main job on the embedded toy default
#   make test   - install what is missing, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pixpref-installed

.PHONY: demo test install bench lint browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the releases on this machine's disk, so nothing pulls a second torch
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The Gradio personalization demo on the embedded toy model: http://127.0.0.1:7860
demo: $(STAMP)
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(VENV)/bin/pixpref demo --config configs/demo/toy.yaml

# Debian's Chromium for the real-browser demo test (tests/test_demo_browser.py skips, saying why, without it)
browser:
	@command -v chromium >/dev/null 2>&1 || (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1) \
	  || echo "chromium could not be installed: the browser test will skip")

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_ppd_step.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_scorer.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_user_embedding.py

lint: $(STAMP)
	$(VENV)/bin/ruff check pixpref train tests benchmarks
