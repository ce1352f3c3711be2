# One environment (.venv) for demo, tests, lint and benchmarks.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned exactly: a CPU build of this version is what the machines provide.
TORCH := torch==2.13.0

.PHONY: install demo test lint bench bench-quality clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[train,dev]"
	touch $@

install: $(VENV)/.installed

DEMO_MODEL := sample_models/resnet_fashion_trained.onnx

# The trained Fashion-MNIST ResNet: what analyze sees, then shrink to half its FLOPs.
demo: install
	$(BIN)/morphnet analyze $(DEMO_MODEL)
	$(BIN)/morphnet shrink $(DEMO_MODEL) -o build/demo/resnet_fashion_50.onnx \
		--target-flops 50% --data sample_models/fashion_mnist_subset.npz \
		--epochs 3 --finetune-epochs 3 --report build/demo/shrink_report.json

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests bench sample_models
	$(BIN)/ruff format --check src tests bench sample_models

# Benchmarks are never part of `make test`; results go to bench/results/.
bench: install
	$(BIN)/python bench/bench_analyze.py
	$(BIN)/python bench/bench_wrapper.py --threads 1
	$(BIN)/python bench/bench_latency.py
	$(BIN)/python bench/bench_latency_shrink.py
	$(BIN)/python bench/bench_train.py

# Minutes: full Fashion-MNIST from Debian's dataset-fashion-mnist, and torch-pruning (bench only).
bench-quality: install
	test -d /usr/share/datasets/fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)
	$(BIN)/pip install --quiet --no-deps "torch-pruning>=1.4" "onnxsim==0.8.1"
	$(BIN)/python bench/bench_quality.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
