# The two set-up commands of README.md: `make run` (the main job) and `make test`.
# Each creates .venv by itself (scripts/bootstrap) on a fresh machine.
SHELL := /bin/bash
VENV := .venv/bin
# The real data lives beside the project (../shared/data); override with EAQ_DATA_ROOT=...
export EAQ_DATA_ROOT ?= $(abspath ../shared/data)

.PHONY: setup run run-3seeds demo test lint tables bench bench-lsq bench-deploy bench-scale bench-overhead peers

setup:
	@scripts/bootstrap

# The main job: the seed study on the three CIFAR-100 reference models (studies/seed_cifar100.yaml:
# FP32, uniform 8/6/4 per channel and per tensor, the seed's percentile mix, the energy-budgeted
# front, ranking-aware PTQ on the ViT, QDrop), all 10,000 test images, calibration seed 0; then
# the report with the seed's published tables beside the measured rows. Resumes where it stopped.
run: setup
	$(VENV)/eaq study studies/seed_cifar100.yaml --out runs/seed-cifar100 --resume
	$(VENV)/eaq report runs/seed-cifar100 --published studies/published/seed.yaml
	$(VENV)/python benchmarks/study_overhead.py runs/seed-cifar100

# The same with calibration seeds 0, 1 and 2 (about three times as long).
run-3seeds: setup
	$(VENV)/eaq study studies/seed_cifar100.yaml --seeds 0 1 2 --out runs/seed-cifar100-3seeds --resume
	$(VENV)/eaq report runs/seed-cifar100-3seeds --published studies/published/seed.yaml

# A quick demo: the same kinds of rows on the pretrained ResNet-20 (CIFAR-10), one seed.
demo: setup
	$(VENV)/eaq study studies/resnet20_cifar10.yaml --seeds 0 --out runs/demo-resnet20 --resume
	$(VENV)/eaq report runs/demo-resnet20

test: setup
	$(VENV)/ruff check eaq tests benchmarks
	$(VENV)/python -m pytest -n 2 tests eaq --doctest-modules

lint: setup
	$(VENV)/ruff check eaq tests benchmarks
	$(VENV)/ruff format --check eaq tests benchmarks

# store the main job's rows in results/ and rewrite the tables of README.md and docs/ from them
tables: setup
	$(VENV)/eaq tables --import runs/seed-cifar100

bench: setup
	$(VENV)/python benchmarks/throughput.py

# QDrop's activation fake quantization, forward + backward: plain autograd ops, PyTorch's
# learnable fake quantize, eaq's (ratios in the same run)
bench-lsq: setup
	$(VENV)/python benchmarks/lsq_step.py

# FP32 eager vs FP32 / integer onnxruntime (throughput, latency, sizes, modelled energy)
bench-deploy: setup
	$(VENV)/python benchmarks/deployment.py

# a 12-row study in-process and on Ray with 1 and 2 workers: wall times and speed-up
bench-scale: setup
	$(VENV)/python benchmarks/scale_out.py

# where the main job's time went: wall time over the sum of its evaluations' time
bench-overhead: setup
	$(VENV)/python benchmarks/study_overhead.py runs/seed-cifar100

# peer toolkits (onnxruntime, torchao, Brevitas, NNCF, AIMET, ModelOpt) on the same checkpoints,
# calibration images and test sets, in their own .venv-peers (peers/README.md); never part of
# make test. Resumable; then results/peers.json, results/peers.csv and docs/peers.md
peers:
	bash peers/setup.sh
	.venv-peers/bin/python peers/run.py --out runs/peers
	.venv-peers/bin/python peers/report.py --import runs/peers
