# The two set-up commands of README.md: `make run` (the main job) and `make test`.
# Each creates .venv by itself (scripts/bootstrap) on a fresh machine.
SHELL := /bin/bash
VENV := .venv/bin
# The real data lives beside the project (../shared/data); override with EAQ_DATA_ROOT=...
export EAQ_DATA_ROOT ?= $(abspath ../shared/data)

.PHONY: setup run test lint bench bench-deploy bench-scale

setup:
	@scripts/bootstrap

# The study: FP32, uniform 8/6/4, the seed's percentile mix and budgeted mixed precision on the
# pretrained ResNet-20 (CIFAR-10), 3 calibration seeds, full test set; then the report.
# Resumes where it stopped (90 rows, about 24 minutes on an idle 2-core machine).
run: setup
	$(VENV)/eaq study studies/resnet20_cifar10.yaml --out runs/study-resnet20 --resume
	$(VENV)/eaq report runs/study-resnet20

test: setup
	$(VENV)/ruff check eaq tests benchmarks
	$(VENV)/python -m pytest -n 2 tests eaq --doctest-modules

lint: setup
	$(VENV)/ruff check eaq tests benchmarks
	$(VENV)/ruff format --check eaq tests benchmarks

bench: setup
	$(VENV)/python benchmarks/throughput.py

# FP32 eager vs FP32 / integer onnxruntime (throughput, latency, sizes, modelled energy)
bench-deploy: setup
	$(VENV)/python benchmarks/deployment.py

# a 12-row study in-process and on Ray with 1 and 2 workers: wall times and speed-up
bench-scale: setup
	$(VENV)/python benchmarks/scale_out.py
