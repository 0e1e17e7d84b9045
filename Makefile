# `make install` builds .venv/ (idempotent); `make test` and `make demo` run on top of it.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-fast demo clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py tools/install_detectron2.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install $(TORCH_PINS)
	bash tools/install_detectron2.sh $(PY)
	$(PY) -m pip install -e '.[test,export,int8,peer]' 'numpy<2'  # Detectron2 0.7 needs numpy 1
	touch $@

# The whole suite in one pytest process, as CI runs it (.ci/run).
test: install
	$(PY) -m pytest -q tests

# The unit and structure tests: no training loops, tools or processes (tests marked slow).
test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

# Quick start: train a small SSD from scratch on the generated digits, evaluate it with the COCO
# evaluator, draw ground truth | predictions for validation images and plot the training curves.
DEMO_CONFIG ?= configs/quickstart/ssd_digits.yaml
DEMO_OUT ?= output/quickstart/ssd_digits
export DETECTRON2_DATASETS ?= datasets

demo: install
	rm -rf $(DEMO_OUT)
	$(PY) train_net.py --config-file $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_OUT)
	$(PY) tools/demo.py --config-file $(DEMO_CONFIG) --dataset digits_val --num-images 8 \
		--output $(DEMO_OUT)/pictures MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth
	$(PY) tools/plot_training_curves.py $(DEMO_OUT)/metrics.json
	@echo "Quick start done: log $(DEMO_OUT)/log.txt, ground truth | predictions in $(DEMO_OUT)/pictures/, curves in $(DEMO_OUT)/training_curves.png"

clean:
	rm -rf $(VENV) build *.egg-info
