# `make install` builds .venv/ (idempotent); `make test` runs on top of it.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py tools/install_detectron2.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install $(TORCH_PINS)
	bash tools/install_detectron2.sh $(PY)
	$(PY) -m pip install -e '.[test,export]' 'numpy<2'  # Detectron2 0.7 needs numpy 1
	touch $@

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
