# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: demo test lint format bench zoo clean samples fuzz

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kerascheck summary sample_models/seed000_regressor.keras
	$(BIN)/kerascheck diff --layer-wise sample_models/seed000_regressor.keras sample_models/seed000_regressor.input.npy
	$(BIN)/kerascheck grad sample_models/seed000_regressor.keras sample_models/seed000_regressor.input.npy sample_models/seed000_regressor.target.npy

test: $(STAMP)
	$(BIN)/ruff check kerascheck tests bench sample_models
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check kerascheck tests bench sample_models
	$(BIN)/ruff format --check kerascheck tests bench sample_models

format: $(STAMP)
	$(BIN)/ruff format kerascheck tests bench sample_models
	$(BIN)/ruff check --fix kerascheck tests bench sample_models

samples: $(STAMP)
	$(BIN)/python sample_models/make_samples.py

bench: $(STAMP)
	$(BIN)/python bench/bench_forward.py --only seed000_regressor seed004_cnn MobileNetV2 ResNet50 VGG16 --batches 16
	$(BIN)/python bench/bench_grad.py

fuzz: $(STAMP)
	$(BIN)/python fuzz/run_fuzz.py --cases 3000
	$(BIN)/pip install --quiet atheris
	$(BIN)/python fuzz/coverage_fuzz.py --runs 3000 --seconds 1800

zoo: $(STAMP)
	$(BIN)/python bench/zoo.py

clean:
	rm -rf $(VENV)
