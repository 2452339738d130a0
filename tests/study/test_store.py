from __future__ import annotations

import sqlite3

import pytest

from eaq.errors import EaqError
from eaq.study import Store
from tests.study.postgres import start_postgres


@pytest.fixture(scope="module")
def postgres_url():
    yield from start_postgres()


def _reset(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        for table in ("meta", "results", "sensitivity"):
            c.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request, tmp_path):
    """``open_store(create=...)``: the same store, in SQLite or on a real PostgreSQL server."""
    if request.param == "sqlite":
        return lambda create=False: Store.open_folder(tmp_path, create=create)
    url = request.getfixturevalue("postgres_url")
    _reset(url)
    return lambda create=False: Store.open(tmp_path, url=url)


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


def test_fingerprint_guard_and_rows(open_store):
    with open_store(create=True) as s:
        assert s.claim("abc", {"name": "one"})
        assert not s.claim("abc", {"name": "one"})
        s.add_result(_row())
        with pytest.raises(Exception) as e:  # a key is written once
            s.add_result(_row())
        assert "unique" in str(e.value).lower() or isinstance(e.value, sqlite3.IntegrityError)
        assert s.done_keys() == {("m", "c", 0)}
        got = s.results()[0]
        assert got["bits"] == {"8": 2} and got["top1"] == 1.0 and got["relative_energy"] == 0.5
        s.add_result({**_row(seed=1), "top1": 75.44999999999999})
        assert s.results()[1]["top1"] == 75.44999999999999  # doubles, not 4-byte floats
    with open_store() as s, pytest.raises(EaqError, match="different study"):
        s.claim("xyz", {"name": "two"})
    with open_store() as s:
        assert len(s.results()) == 2  # nothing lost


def test_sensitivity_rows_round_trip(open_store):
    rows = [
        dict(measure="l2", index=i, layer=f"l{i}", kind="conv", w_bits=w, a_bits=w, value=0.5 * i)
        for i in range(3)
        for w in (4, 8)
    ]
    with open_store(create=True) as s:
        assert not s.has_sensitivity("m", 0, "l2")
        s.add_sensitivity("m", 0, rows)
        assert s.has_sensitivity("m", 0, "l2") and not s.has_sensitivity("m", 1, "l2")
        got = s.sensitivity_rows("m", 0)
    assert [(r["layer"], r["w_bits"], r["value"]) for r in got] == [
        (r["layer"], r["w_bits"], r["value"]) for r in rows
    ]


def test_missing_sqlite_store_and_bad_urls(tmp_path):
    with pytest.raises(EaqError, match="no study database"):
        Store.open_folder(tmp_path / "none")
    with pytest.raises(EaqError, match="must be a postgresql://"):
        Store.open(tmp_path, url="mysql://x")
    pytest.importorskip("psycopg")
    with pytest.raises(EaqError, match="cannot connect to PostgreSQL at 127.0.0.1:1"):
        Store.open(tmp_path, url="postgresql://eaq@127.0.0.1:1/postgres")


def test_a_study_on_postgresql_resumes_and_reports(tmp_path, postgres_url, data_root, capsys):
    """The tiny study through the command line with --store: rows, resume, report."""
    from eaq.cli.main import main

    _reset(postgres_url)
    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        "study: pg\nseeds: [0]\ncalib_size: 8\nbatch_size: 32\n"
        "models: [{name: resnet20_cifar, dataset: cifar10}]\n"
        "configs:\n  - {name: FP32, strategy: fp32}\n  - {name: W8A8, strategy: uniform}\n"
    )
    args = ["study", str(cfg), "--out", str(tmp_path / "run"), "--limit", "16", "--no-progress",
            "--data-root", str(data_root), "--store", postgres_url]  # fmt: skip
    assert main(args) == 0
    assert not (tmp_path / "run" / "study.sqlite").exists()  # the rows went to PostgreSQL
    with Store.open(tmp_path, url=postgres_url) as s:
        assert {k[1] for k in s.done_keys()} == {"FP32", "W8A8"}
    assert main(args) == 2  # the same study without --resume is refused
    assert main([*args, "--resume"]) == 0
    assert main(["report", str(tmp_path / "run"), "--store", postgres_url]) == 0
    assert "W8A8" in (tmp_path / "run" / "report" / "report.md").read_text()
    capsys.readouterr()
    assert main([*args[:-2], "--store", "sqlite:///x"]) == 2
    assert "must be a postgresql://" in capsys.readouterr().err


def test_result_columns_are_the_tables(open_store):
    from eaq.study.store import RESULT_COLUMNS

    with open_store(create=True) as s:
        s.add_result(_row())
        assert set(s.results()[0]) == set(RESULT_COLUMNS)
