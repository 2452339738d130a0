"""Executors: what measures a study's row jobs, in this process or on a Ray cluster.

An executor has one method, ``run(cfg, model, jobs)``, that yields the measured row of every
:class:`~eaq.study.runner.RowJob` in any order; the driver (:func:`eaq.study.run_study`) writes
each row to the store as it comes, so a row is written once, by one process, whichever executor
measured it, and an interrupted study resumes from the store.

:class:`InProcessExecutor` measures the jobs one after another with the driver's model.
:class:`RayExecutor` sends each job to a Ray task. A task gets the (small) study config, the
model's name, the data root and the job; the worker builds the model and the data sets once
from the data root by path and keeps them for its next tasks, so nothing bigger than a plan is
sent per task. A task whose worker dies is run again elsewhere (Ray's task retries); a cluster
that goes away ends the study with a clear error, the rows written so far kept.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from eaq.errors import EaqError

RAY_HINT = "install it with `pip install ray` (eaq's set-up installs it)"
KILL_ONCE_ENV = "EAQ_TEST_KILL_WORKER_ONCE"
"""Fault injection for tests: a file path; the first task that finds no file there creates it
and kills its own worker process (SIGKILL), as a crashed machine would."""


class InProcessExecutor:
    """Measures the jobs one after another in this process, with the driver's model."""

    name = "in-process"

    def run(self, cfg, model, jobs, *, progress: bool = False, on_start=None):
        from eaq.study.runner import execute_row

        for job in jobs:
            if on_start is not None:
                on_start(job)
            yield execute_row(cfg, model, job, progress)

    def close(self) -> None:
        pass


_WORKER_MODELS: dict = {}


def _worker_row(cfg, model_name: str, data_root: str, job) -> dict:
    """A Ray task: the model of ``model_name`` (built once per worker process), then the row."""
    marker = os.environ.get(KILL_ONCE_ENV)
    if marker and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    from eaq.study.runner import _Model, execute_row

    key = (cfg.fingerprint(), model_name, data_root)
    if key not in _WORKER_MODELS:
        _WORKER_MODELS.clear()  # one model at a time per worker
        entry = next(e for e in cfg.models if e.name == model_name)
        _WORKER_MODELS[key] = _Model(entry, cfg, Path(data_root))
    return execute_row(cfg, _WORKER_MODELS[key], job)


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """EaqError at once when nothing listens at a cluster address (Ray itself waits minutes)."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EaqError(f"--address {address!r} must look like HOST:PORT (as `ray start` prints)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise EaqError(
            f"no Ray cluster answers at {address} ({e.strerror or e}); start one with "
            "`ray start --head` there, or drop --address for a local instance"
        ) from None


class RayExecutor:
    """Measures each job as a Ray task (see the module docstring).

    Args:
        data_root: the data folder, as the workers see it (the same path on every node, or a
            shared file system).
        address: a running cluster's address (``ray start --head`` prints it); None starts a
            local Ray instance with ``num_cpus`` CPUs.
        num_cpus: CPUs of the local instance (None: all).
        cpus_per_task: CPUs each task reserves; torch uses that many threads in it.
        max_retries: how often a task whose worker died is run again.
        runtime_env: passed to ``ray.init`` (environment variables for the workers, say).
    """

    name = "ray"

    def __init__(
        self,
        data_root: Path,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        cpus_per_task: int = 1,
        max_retries: int = 3,
        runtime_env: dict | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise EaqError(f"--executor ray needs Ray; {RAY_HINT}") from None
        if cpus_per_task < 1:
            raise EaqError(f"cpus per task must be >= 1, got {cpus_per_task}")
        self.ray = ray
        self.data_root = str(Path(data_root).resolve())
        self.cpus_per_task = cpus_per_task
        if address is not None:
            _check_reachable(address)
        env = dict(runtime_env or {})
        env.setdefault("env_vars", {})
        env["env_vars"] = {"OMP_NUM_THREADS": str(cpus_per_task), **env["env_vars"]}
        try:
            ray.init(
                address=address or "local",  # never join a cluster by accident
                num_cpus=None if address else num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env=env,
                ignore_reinit_error=True,
            )
        except Exception as e:  # no cluster at that address, a bad address, ...
            text = " ".join(str(e).split())[:300]
            where = address or "a new local instance"
            raise EaqError(f"cannot connect to Ray at {where}: {text}") from None
        self.task = ray.remote(num_cpus=cpus_per_task, max_retries=max_retries)(_worker_row)

    def run(self, cfg, model, jobs, *, progress: bool = False, on_start=None):
        ray = self.ray
        pending = {self.task.remote(cfg, job.model, self.data_root, job): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            try:
                row = ray.get(done[0])
            except ray.exceptions.RayError as e:
                job = pending[done[0]]
                where = f" ({job.model} {job.config} seed {job.seed})"
                text = " ".join(str(e).split())[:300]
                raise EaqError(
                    f"a Ray task failed{where}: {text}; the rows written so far are kept, "
                    "run again with --resume"
                ) from None
            del pending[done[0]]
            yield row

    def close(self) -> None:
        self.ray.shutdown()
