# The two set-up commands of README.md: `make run` (the main job) and `make test`.
# Each creates .venv by itself (scripts/bootstrap) on a fresh machine.
SHELL := /bin/bash
VENV := .venv/bin
# The real data lives beside the project (../shared/data); override with EAQ_DATA_ROOT=...
export EAQ_DATA_ROOT ?= $(abspath ../shared/data)

.PHONY: setup run test lint bench

setup:
	@scripts/bootstrap

run: setup
	$(VENV)/eaq quantize --model resnet20_cifar --dataset cifar10 --w-bits 8 --a-bits 8

test: setup
	$(VENV)/ruff check eaq tests benchmarks
	$(VENV)/python -m pytest -n 2 tests

lint: setup
	$(VENV)/ruff check eaq tests benchmarks
	$(VENV)/ruff format --check eaq tests benchmarks

bench: setup
	$(VENV)/python benchmarks/throughput.py
