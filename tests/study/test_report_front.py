"""front_vs_uniform on summary rows built by hand."""

from eaq.study.report import front_vs_uniform


def _row(config, strategy, energy, top1, base=None, granularity=None):
    return {
        "method": "ptq",
        "granularity": granularity,
        "model": "m",
        "config": config,
        "config_base": base or config,
        "strategy": strategy,
        "relative_energy": energy,
        "top1_mean": top1,
    }


def test_front_read_at_each_uniform_energy():
    summary = [
        _row("FP32", "fp32", 1.0, 92.0),
        _row("W8A8", "uniform", 0.15, 91.8),
        _row("W6A6", "uniform", 0.10, 91.6),
        _row("W4A4", "uniform", 0.06, 86.0),
        _row("W8A8-tensor", "uniform", 0.15, 92.5, granularity="tensor"),  # another set-up
        _row("b@0.14", "budget", 0.14, 91.9, base="b"),
        _row("b@W6A6", "budget", 0.099, 91.5, base="b"),
        _row("b@0.08", "budget", 0.08, 90.0, base="b"),
    ]
    got = {c["uniform"]: c for c in front_vs_uniform(summary)}
    # FP32 is not a uniform configuration; per-tensor weights are another quantizer set-up
    assert set(got) == {"W8A8", "W6A6", "W4A4"}
    assert got["W8A8"]["best"] == "b@0.14" and round(got["W8A8"]["delta"], 6) == 0.1
    assert got["W6A6"]["best"] == "b@W6A6" and round(got["W6A6"]["delta"], 6) == -0.1
    assert got["W4A4"]["best"] is None and got["W4A4"]["delta"] is None


def test_front_labels_stay_inside_the_axes(tmp_path, monkeypatch):
    """Front labels in the plot's right half end at their point (right-aligned, to its left);
    those in the left half start at it, so no label runs past either edge."""
    from eaq.study import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, folder, stem: figures.append(fig))
    summary = [
        _row("FP32", "fp32", 1.0, 92.0) | {"top1_std": 0.0},
        *(
            _row(name, "uniform", energy, top1) | {"top1_std": 0.0}
            for name, energy, top1 in [
                ("W4A4", 0.07, 86.0),
                ("W6A6", 0.12, 91.0),
                ("W4A8-a-long-configuration-name", 0.23, 91.8),
            ]
        ),
    ]
    report.pareto_plot(summary, "m", tmp_path)
    (fig,) = figures
    labels = {t.get_text(): t for t in fig.axes[0].texts}
    assert set(labels) == {"W4A4", "W6A6", "W4A8-a-long-configuration-name"}
    assert labels["W4A8-a-long-configuration-name"].get_horizontalalignment() == "right"
    assert labels["W4A4"].get_horizontalalignment() == "left"
    assert labels["W6A6"].get_horizontalalignment() == "left"
