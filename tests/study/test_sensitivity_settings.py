"""A budget's sensitivity is measured with the quantizer settings of its own configuration."""

import numpy as np

from eaq.data import calibration_batches, load_dataset
from eaq.evaluate import channels_last_
from eaq.mixed import candidate_grid, layer_sensitivity
from eaq.models import create_model, get_model_info
from eaq.plan import layer_config
from eaq.study import Store, load_study, run_study

STUDY = """\
study: sens-settings
seeds: [0]
calib_size: 8
batch_size: 32
sensitivity: {widths: [4, 8], score_size: 16}
models: [{name: resnet20_cifar, dataset: cifar10}]
configs:
  - {name: budget, strategy: budget, budgets: [0.1]}
  - {name: budget-tensor, strategy: budget, budgets: [0.1], granularity: tensor}
"""


def test_each_budget_uses_sensitivities_of_its_own_settings(tmp_path, resnet20_path, data_root):
    (tmp_path / "s.yaml").write_text(STUDY)
    out = tmp_path / "run"
    run_study(load_study(tmp_path / "s.yaml").with_limit(16), out, data_root=data_root,
              progress=False)  # fmt: skip
    with Store.open_folder(out) as store:
        rows = store.sensitivity_rows("resnet20_cifar", 0)
    keys = {r["measure"] for r in rows}
    assert keys == {"l2", "l2@granularity=tensor"}
    stored = {
        (r["layer"], r["w_bits"]): r["value"]
        for r in rows
        if r["measure"] == "l2@granularity=tensor"
    }
    info = get_model_info("resnet20_cifar")
    calib = calibration_batches(
        load_dataset("cifar10", "train", data_root), n=8, seed=0,
        mean=info.mean, std=info.std, input_size=32,
    )  # fmt: skip
    model = create_model("resnet20_cifar", weights="default", data_root=data_root)
    channels_last_(model)  # as the study keeps its models
    direct = layer_sensitivity(
        model, calib, candidate_grid([4, 8]), base=layer_config(8, 8, granularity="tensor")
    )
    col = direct.column((4, 4))
    got = np.array([stored[(name, 4)] for name in direct.names])
    np.testing.assert_allclose(got, col, rtol=1e-6)
    per_channel = np.array([r["value"] for r in rows if r["measure"] == "l2" and r["w_bits"] == 4])
    assert not np.allclose(per_channel, got)


def test_each_budget_plans_with_the_sensitivity_of_its_own_settings(
    tmp_path, resnet20_path, data_root
):
    from eaq.mixed import Sensitivity
    from eaq.study.runner import _Model, _plans

    (tmp_path / "s.yaml").write_text(STUDY.replace("[0.1]", "[0.075]"))
    cfg = load_study(tmp_path / "s.yaml").with_limit(16)
    out = tmp_path / "run"
    run_study(cfg, out, data_root=data_root, progress=False)
    with Store.open_folder(out) as store:
        plans = {r["config"]: r["plan"] for r in store.results()}
        sens = store.sensitivity_rows("resnet20_cifar", 0)
    by_key = {k: Sensitivity.from_rows([r for r in sens if r["measure"] == k]) for k in
              ("l2", "l2@granularity=tensor")}  # fmt: skip
    m = _Model(cfg.models[0], cfg, data_root)
    entry = cfg.configs[1]
    [(name, own)] = _plans(entry, m.layers, m.stats, cfg.profile, by_key["l2@granularity=tensor"])
    [(_, other)] = _plans(entry, m.layers, m.stats, cfg.profile, by_key["l2"])
    assert plans[name] == own.plan.to_dict()
    assert own.plan != other.plan  # the two sensitivities give different plans here
