from __future__ import annotations

import sqlite3

import pytest

from eaq.errors import EaqError
from eaq.study import Store


def _row(config="c", seed=0):
    return dict(
        model="m",
        config=config,
        seed=seed,
        strategy="uniform",
        dataset="d",
        method="ptq",
        top1=1.0,
        top5=2.0,
        n_images=3,
        calib_size=4,
        relative_energy=0.5,
        energy=1.0,
        mac_share=0.1,
        memory_share=0.9,
        relative_bops=0.2,
        bits={"8": 2},
        plan={},
        layers=[],
        info={},
        provenance={},
        seconds=0.1,
        calib_seconds=0.05,
    )


def test_fingerprint_guard_and_rows(tmp_path):
    with Store.open_folder(tmp_path, create=True) as s:
        assert s.claim("abc", {"name": "one"})
        assert not s.claim("abc", {"name": "one"})
        s.add_result(_row())
        with pytest.raises(sqlite3.IntegrityError):  # a key is written once
            s.add_result(_row())
        assert s.done_keys() == {("m", "c", 0)}
        assert s.results()[0]["bits"] == {"8": 2}
    with Store.open_folder(tmp_path) as s, pytest.raises(EaqError, match="different study"):
        s.claim("xyz", {"name": "two"})
    with Store.open_folder(tmp_path) as s:
        assert len(s.results()) == 1  # nothing lost
    with pytest.raises(EaqError, match="no study database"):
        Store.open_folder(tmp_path / "none")
