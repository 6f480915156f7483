# `make demo` and `make test` do all the set-up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The pinned CPU wheel first: a bare `torch` would pull a CUDA build of several GB.
	$(PY) -m pip install -q torch==2.13.0
	# torchvision 0.28 (made for torch 2.13) is the tests' independent ResNet-50 reference only: a
	# CUDA build, which would break transformers' imports from site-packages (tests/test_resnet.py).
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/torchvision-reference torchvision==0.28.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mrl-deploy demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
