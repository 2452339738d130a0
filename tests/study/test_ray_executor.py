"""A study on Ray: the same rows as in-process; a killed worker's row is retried elsewhere and
written once; a killed driver resumes from the store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eaq.study import load_study, run_study
from eaq.study.executors import KILL_ONCE_ENV, RayExecutor
from tests.study.test_study_cli import _n_rows, _rows

pytest.importorskip("ray")

STUDY = """\
study: ray-tiny
seeds: [0, 1]
calib_size: 8
batch_size: 32
models: [{name: resnet20_cifar, dataset: cifar10}]
configs:
  - {name: FP32, strategy: fp32}
  - {name: W8A8, strategy: uniform, w_bits: 8}
  - {name: W4A4, strategy: uniform, w_bits: 4}
"""
LIMIT = 32


@pytest.fixture(scope="module")
def config(tmp_path_factory, resnet20_path) -> Path:
    path = tmp_path_factory.mktemp("ray") / "study.yaml"
    path.write_text(STUDY)
    return path


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory, data_root) -> list[dict]:
    out = tmp_path_factory.mktemp("in-process") / "run"
    run_study(load_study(config).with_limit(LIMIT), out, data_root=data_root, progress=False)
    return _rows(out)


def test_ray_rows_equal_in_process_rows_and_survive_a_killed_worker(
    config, reference, tmp_path, data_root
):
    marker = tmp_path / "killed-once"
    executor = RayExecutor(
        data_root, num_cpus=2, runtime_env={"env_vars": {KILL_ONCE_ENV: str(marker)}}
    )
    try:
        out = tmp_path / "run"
        summary = run_study(
            load_study(config).with_limit(LIMIT),
            out,
            data_root=data_root,
            progress=False,
            executor=executor,
        )
    finally:
        executor.close()
    assert marker.is_file()  # a worker was killed (SIGKILL) in the middle of a row
    assert summary.written == len(reference) == 6  # each row once: no loss, no duplicate
    assert _rows(out) == reference


def test_a_killed_driver_resumes_from_the_store(config, reference, tmp_path, data_root):
    out = tmp_path / "killed"
    cmd = [
        sys.executable, "-m", "eaq", "study", str(config), "--out", str(out),
        "--limit", str(LIMIT), "--no-progress", "--executor", "ray", "--workers", "2",
    ]  # fmt: skip
    env = {**os.environ, "EAQ_DATA_ROOT": str(data_root)}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while _n_rows(out / "study.sqlite") < 1 and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    killed = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
    proc.wait()
    partial = _n_rows(out / "study.sqlite")
    assert killed and 1 <= partial < len(reference), "the study ended before it was killed"
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _rows(out) == reference


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--address", "127.0.0.1:1"], "--address and --workers go with --executor ray"),
        (["--executor", "ray", "--address", "127.0.0.1:1"], "no Ray cluster answers at"),
        (["--executor", "ray", "--address", "nowhere"], "must look like HOST:PORT"),
        (["--executor", "ray", "--cpus-per-task", "0"], "--cpus-per-task must be >= 1"),
    ],
)
def test_bad_execution_options(config, tmp_path, capsys, extra, message):
    from eaq.cli.main import main

    code = main(["study", str(config), "--out", str(tmp_path / "run"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # nothing started
