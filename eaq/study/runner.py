"""Run a study: models x configurations x seeds, each result a row of the store.

Per model: statistics for the energy model and the FP32 evaluation once; per seed: the layer
sensitivities (stored, reused on resume) and every configuration's plan(s), resolved into a
list of :class:`RowJob` s; then an executor measures each job (quantization with its method
through :func:`eaq.pipeline.quantize_and_evaluate`, evaluation on the test set, energy) and the
driver writes each row in one transaction. A row whose key is in the store is skipped, so an
interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eaq.data import calibration_batches, eval_batches, load_dataset
from eaq.energy import collect_stats, plan_energy
from eaq.errors import EaqError
from eaq.evaluate import EvalResult, channels_last_, evaluate
from eaq.methods import check_method_model, check_method_plan, method_chain
from eaq.mixed import (
    PlanScorer,
    Sensitivity,
    StrategyContext,
    bit_distribution,
    get_strategy,
    layer_sensitivity,
    make_plans,
    plan_sha256,
)
from eaq.models import create_model, get_model_info, weights_file
from eaq.nn import quantizable_layers
from eaq.pipeline import quantize_and_evaluate
from eaq.plan import LAYER_OPTIONS, Plan
from eaq.provenance import provenance
from eaq.quant import ObserverCache
from eaq.study.config import ConfigEntry, ModelEntry, StudyConfig
from eaq.study.executors import InProcessExecutor
from eaq.study.store import Store
from eaq.study.tables import study_rows


@dataclass(frozen=True)
class RunSummary:
    """What :func:`run_study` did."""

    folder: Path
    written: int
    skipped: int
    seconds: float


def _n_plans(entry: ConfigEntry) -> int:
    if entry.strategy == "budget":
        budgets = entry.options_dict.get("budgets", [0.15])
        return len(budgets) if isinstance(budgets, list) else 1
    return 1


def _context(entry: ConfigEntry, layers, stats, profile, sens, plan_loss) -> StrategyContext:
    return StrategyContext(
        layers=tuple(layers),
        stats=stats,
        profile=profile,
        base=entry.base(),
        first_last_8bit=entry.first_last_8bit,
        sensitivity=sens,
        plan_loss=plan_loss,
    )


def _plans(entry: ConfigEntry, layers, stats, profile, sens, plan_loss=None):
    out = []
    ctx = _context(entry, layers, stats, profile, sens, plan_loss)
    for named in make_plans(ctx, entry.strategy, entry.options_dict):
        name = entry.name if named.label is None else f"{entry.name}@{named.label}"
        out.append((name, named))
    return out


class _Model:
    """One model's data, float network and energy statistics."""

    def __init__(self, entry: ModelEntry, cfg: StudyConfig, root: Path) -> None:
        self.entry = entry
        self.info = get_model_info(entry.name)
        self.dataset = entry.dataset or self.info.default_dataset
        self.model = channels_last_(
            create_model(
                entry.name, num_classes=entry.num_classes, weights=entry.weights, data_root=root
            )
        )
        self.test = load_dataset(self.dataset, "test", root)
        self.train = load_dataset(self.dataset, "train", root)
        n_out = entry.num_classes or self.info.num_classes
        n_classes = getattr(self.test, "num_classes", None)
        if n_classes is not None and n_classes != n_out:
            raise EaqError(
                f"model {entry.name} has {n_out} classes but {self.dataset} has {n_classes}"
            )
        self.norm = dict(mean=self.info.mean, std=self.info.std, input_size=self.info.input_size)
        self.batches = eval_batches(
            self.test, batch_size=cfg.batch_size, limit=cfg.limit, **self.norm
        )
        self.stats = collect_stats(self.model, self.info.input_size)
        self.layers = quantizable_layers(self.model)
        self.weights_file = weights_file(entry.name, entry.weights, root)
        self.fp32: EvalResult | None = None  # the FP32 row's evaluation, made once
        self._observers: dict[tuple, ObserverCache] = {}

    def calib(self, n: int, seed: int, offset: int = 0):
        return calibration_batches(self.train, n=n, seed=seed, offset=offset, **self.norm)

    def observers(self, n: int, seed: int) -> ObserverCache:
        """The plain-PTQ calibration passes over :meth:`calib` ``(n, seed)``, shared by every
        plan calibrated on those images (one pass per kind of quantizer settings)."""
        if (n, seed) not in self._observers:
            self._observers.clear()  # rows come seed by seed: keep one cache's observers
            self._observers[(n, seed)] = ObserverCache()
        return self._observers[(n, seed)]


def check_study(cfg: StudyConfig, model: _Model) -> None:
    """Build every plan with placeholder sensitivities: bad options and budgets fail early."""
    cands = cfg.sensitivity.candidates()
    dummy = Sensitivity(
        names=tuple(r.name for r in model.layers),
        kinds=tuple(r.kind for r in model.layers),
        candidates=tuple(cands),
        values=np.zeros((len(model.layers), len(cands))),
        measure=cfg.sensitivity.measure,
        n_images=0,
    )
    checked_models: set[str] = set()
    for entry in cfg.configs_for(model.entry.name):
        method, options = cfg.method_of(entry)
        try:
            plans = _plans(entry, model.layers, model.stats, cfg.profile, dummy, lambda plan: 0.0)
            for _, named in plans:
                if named.strategy == "fp32":
                    continue
                for step in method_chain(method, options):
                    check_method_plan(step, named.plan)
                    if step not in checked_models:
                        check_method_model(step, model.model)
                        checked_models.add(step)
        except EaqError as e:
            raise EaqError(f"model {model.entry.name}, config {entry.name!r}: {e}") from None


def run_study(
    cfg: StudyConfig,
    out: str | Path,
    *,
    resume: bool = False,
    data_root: Path,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
    executor=None,
    store_url: str | None = None,
    from_rows: str | Path | None = None,
) -> RunSummary:
    """Run (or resume) ``cfg`` into the run folder ``out``; see the module docstring.

    ``progress`` shows progress bars; ``say``, when given, receives one line per finished row
    (for logs, where bars do not belong). The rows of each model and seed are resolved into
    :class:`RowJob` s first (:func:`resolve_jobs`), then ``executor`` measures them
    (:func:`execute_row`; default :class:`~eaq.study.executors.InProcessExecutor`, see
    :mod:`eaq.study.executors`) and this driver stores each: in ``out``'s SQLite file, or in
    the PostgreSQL database at ``store_url``. ``from_rows``: a rows file of this same study
    (``eaq tables --import`` writes one to results/), whose rows the store takes first, so
    only the missing rows are measured (a study finished across machines or sessions).

    Raises:
        EaqError: ``out`` holds a different study, or this one without ``resume``; bad options;
            ``from_rows`` is not a rows file of this study.
    """
    start, start_time = time.perf_counter(), time.time()
    given = [] if from_rows is None else study_rows(from_rows, cfg.fingerprint())
    executor = executor or InProcessExecutor()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # study.json and the report live here
    store = Store.open(out, url=store_url, create=True)
    try:
        fresh = store.claim(cfg.fingerprint(), cfg.to_dict())
        if not fresh and not resume:
            raise EaqError(
                f"{out} already holds this study; pass --resume to finish it, or choose "
                "another --out folder"
            )
        (out / "study.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        done = store.done_keys()
        store.add_results([r for r in given if (r["model"], r["config"], r["seed"]) not in done])
        done = store.done_keys()
        n_before = len(done)
        per_seed = {e.name: sum(_n_plans(c) for c in cfg.configs_for(e.name)) for e in cfg.models}
        total = len(cfg.seeds) * sum(per_seed.values())
        written = 0
        # seconds, for the session record; "plans" includes its two parts named after it
        phases = {
            "models": 0.0,
            "plans": 0.0,
            "plans: sensitivities": 0.0,
            "plans: scoring": 0.0,
            "rows": 0.0,
        }

        def record_session() -> None:
            session = {"started": start_time, "seconds": time.perf_counter() - start}
            session |= {"phases": phases, "written": written}
            store.record_session({**session, "executor": type(executor).__name__})

        bar = tqdm(total=total, desc="study", unit="row", disable=not progress)
        bar.update(len(done))
        try:
            for entry in cfg.models:
                keys_model = {k for k in done if k[0] == entry.name}
                if len(keys_model) >= len(cfg.seeds) * per_seed[entry.name]:
                    continue
                t = time.perf_counter()
                m = _Model(entry, cfg, data_root)
                check_study(cfg, m)
                phases["models"] += time.perf_counter() - t
                for seed in cfg.seeds:
                    n_done = sum(1 for k in done if k[0] == entry.name and k[2] == seed)
                    if n_done >= per_seed[entry.name]:
                        continue
                    t = time.perf_counter()
                    jobs = [
                        j
                        for j in resolve_jobs(cfg, m, seed, store, progress, phases)
                        if (j.model, j.config, j.seed) not in done
                    ]
                    phases["plans"] += time.perf_counter() - t

                    def started(job: RowJob) -> None:
                        bar.set_postfix_str(f"{job.model} {job.config} seed {job.seed}")

                    t = time.perf_counter()
                    rows = executor.run(cfg, m, jobs, progress=progress, on_start=started)
                    for row in rows:
                        store.add_result(row)
                        done.add((row["model"], row["config"], row["seed"]))
                        written += 1
                        now = time.perf_counter()
                        phases["rows"] += now - t
                        t = now
                        record_session()
                        bar.update(1)
                        if say is not None:
                            say(
                                f"[{len(done)}/{bar.total}] {row['model']} {row['config']} "
                                f"seed {row['seed']}: top-1 {row['top1']:.2f}%, relative "
                                f"energy {row['relative_energy']:.4f} ({row['seconds']:.1f} s)"
                            )
                    phases["rows"] += time.perf_counter() - t
        finally:
            bar.close()
            record_session()
    finally:
        store.close()
    return RunSummary(out, written, n_before, time.perf_counter() - start)


def sensitivity_key(entry: ConfigEntry, cfg: StudyConfig) -> str:
    """The stored name of the sensitivity ``entry`` uses: its measure, then the quantizer
    settings it differs from the defaults in (``l2@granularity=tensor,observer=mse``), so each
    configuration's sensitivity is measured with its own settings and reused by the others."""
    measure = entry.measure or cfg.sensitivity.measure
    own = [
        f"{o.name}={getattr(entry, o.name)}"
        for o in LAYER_OPTIONS
        if getattr(entry, o.name) != o.default
    ]
    return measure + ("@" + ",".join(own) if own else "")


def _sensitivity(
    cfg: StudyConfig, m: _Model, seed: int, store: Store, progress: bool, entry: ConfigEntry
) -> Sensitivity:
    s_cfg = cfg.sensitivity
    name = m.entry.name
    key = sensitivity_key(entry, cfg)
    if store.has_sensitivity(name, seed, key):
        rows = [r for r in store.sensitivity_rows(name, seed) if r["measure"] == key]
        return Sensitivity.from_rows(rows)
    measure = entry.measure or s_cfg.measure
    n = s_cfg.kl_calib_size if measure == "kl" else (s_cfg.calib_size or cfg.calib_size)
    calib = m.calib(min(n, s_cfg.calib_size or cfg.calib_size), seed)
    sens = layer_sensitivity(
        m.model, calib, s_cfg.candidates(), base=entry.base(), measure=measure, progress=progress
    )
    sens = replace(sens, measure=key)
    store.add_sensitivity(name, seed, sens.to_rows())
    return sens


@dataclass(frozen=True)
class RowJob:
    """One row of a study, fully decided and not yet measured: what an executor runs.

    Attributes:
        model, config, seed: the row's key (``config`` is ``name@label`` for a budget point).
        strategy: the strategy that made the plan (``fp32`` rows evaluate the float model).
        plan: the plan, first/last policy and ``quantize_outputs`` included.
        method, method_options: the PTQ method.
        onnx: also evaluate the row through its ONNX export.
        info: what the strategy recorded, with the config's name, granularity and measure.
    """

    model: str
    config: str
    seed: int
    strategy: str
    plan: Plan
    method: str
    method_options: dict
    onnx: bool
    info: dict


def resolve_jobs(
    cfg: StudyConfig,
    m: _Model,
    seed: int,
    store: Store,
    progress: bool,
    phases: dict[str, float] | None = None,
):
    """The rows of one model and seed: sensitivities (stored, reused on resume) and plans.
    ``phases`` gets the seconds spent measuring sensitivities and scoring candidate plans
    added to its ``"plans: sensitivities"`` and ``"plans: scoring"``."""
    configs = cfg.configs_for(m.entry.name)
    spent = phases if phases is not None else {}
    sens: dict[str, Sensitivity] = {}
    t = time.perf_counter()
    for entry in configs:
        key = sensitivity_key(entry, cfg)
        if get_strategy(entry.strategy).needs_sensitivity and key not in sens:
            sens[key] = _sensitivity(cfg, m, seed, store, progress, entry)
    spent["plans: sensitivities"] = spent.get("plans: sensitivities", 0.0) + (
        time.perf_counter() - t
    )
    scorer: list[PlanScorer] = []  # made on first use
    scored = store.plan_scores(m.entry.name, seed)  # kept, so a resumed run scores no plan twice

    def plan_loss(plan) -> float:
        key = plan_sha256(plan)
        if key in scored:
            return scored[key]
        t = time.perf_counter()
        if not scorer:
            held_out = m.calib(cfg.sensitivity.score_size, seed, offset=cfg.calib_size)
            calib = m.calib(cfg.calib_size, seed)
            observers = m.observers(cfg.calib_size, seed)
            scorer.append(PlanScorer(m.model, calib, held_out, observers=observers))
        loss = scorer[0](plan)
        if math.isfinite(loss):  # a non-finite loss is the selection's error to report
            scored[key] = loss
            store.add_plan_score(m.entry.name, seed, key, loss)
        spent["plans: scoring"] = spent.get("plans: scoring", 0.0) + time.perf_counter() - t
        return loss

    jobs = []
    for entry in configs:
        measure = entry.measure or cfg.sensitivity.measure
        method, method_options = cfg.method_of(entry)
        for cname, named in _plans(
            entry, m.layers, m.stats, cfg.profile, sens.get(sensitivity_key(entry, cfg)), plan_loss
        ):
            plan = named.plan
            if entry.quantize_outputs:
                plan = replace(plan, quantize_outputs=True)
            fp32 = named.strategy == "fp32"
            info = {
                "config_base": entry.name,
                **named.info,
                "granularity": entry.granularity,
                "measure": measure if named.strategy in ("percentile", "budget") else None,
                "method_options": method_options,
            }
            jobs.append(
                RowJob(
                    model=m.entry.name,
                    config=cname,
                    seed=seed,
                    strategy=named.strategy,
                    plan=plan,
                    method="none" if fp32 else method,
                    method_options=method_options,
                    onnx=entry.onnx and not fp32,
                    info=info,
                )
            )
    return jobs


def execute_row(cfg: StudyConfig, m: _Model, job: RowJob, progress: bool = False) -> dict:
    """Measure one row: quantize and evaluate (the pipeline), cost it, and build the row."""
    t0 = time.perf_counter()
    calib_seconds = 0.0
    onnx = shared = None
    fp32_measured = False
    if job.strategy == "fp32":
        if m.fp32 is None:
            m.fp32 = evaluate(m.model, m.batches, desc="fp32", progress=progress)
            fp32_measured = True
        result = m.fp32
    else:
        size = m.info.input_size
        run = quantize_and_evaluate(
            m.model,
            job.plan,
            m.calib(cfg.calib_size, job.seed),
            m.batches,
            method=job.method,
            method_options=job.method_options,
            seed=job.seed,
            onnx_input_shape=(3, size, size) if job.onnx else None,
            desc=job.config,
            progress=progress,
            observers=m.observers(cfg.calib_size, job.seed) if job.method == "ptq" else None,
        )
        result, calib_seconds, onnx = run.result, run.calib_seconds, run.onnx
        shared = run.shared_pass_seconds
    report = plan_energy(m.stats, job.plan, cfg.profile)
    prov = provenance(seed=job.seed, files={"weights": m.weights_file})
    prov["study_fingerprint"] = cfg.fingerprint()
    prov["eval_seconds"] = result.seconds if job.strategy != "fp32" or fp32_measured else 0.0
    if shared is not None:  # calib_seconds counts the shared pass this row did not run again
        prov["shared_pass_seconds"] = shared
    return {
        "model": job.model,
        "config": job.config,
        "seed": job.seed,
        "strategy": job.strategy,
        "dataset": m.dataset,
        "method": job.method,
        "top1": result.top1,
        "top5": result.top5,
        "n_images": result.n_images,
        "calib_size": cfg.calib_size,
        "relative_energy": report.relative_energy,
        "energy": report.energy,
        "mac_share": report.mac_share,
        "memory_share": report.memory_share,
        "relative_bops": report.relative_bops,
        "bits": bit_distribution(job.plan, m.layers),
        "plan": job.plan.to_dict(),
        "layers": [
            {
                "name": r.name,
                "kind": r.kind,
                "w_bits": r.w_bits,
                "a_bits": r.a_bits,
                "energy": r.energy,
                "mac_energy": r.mac_energy,
                "mem_energy": r.mem_energy,
            }
            for r in report.layers
        ],
        "info": {**job.info, **({"onnx": onnx} if onnx is not None else {})},
        "calib_seconds": calib_seconds,
        "provenance": prov,
        "seconds": time.perf_counter() - t0,
    }


def strategy_needs_sensitivity(name: str) -> bool:
    return get_strategy(name).needs_sensitivity
