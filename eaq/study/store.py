"""The results store: one SQLite file per run folder, one row per (model, config, seed).

Each row is written in its own transaction, after its evaluation, so a killed study leaves
only whole rows. The study's fingerprint is stored on creation; opening the folder with a
different study is refused.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from eaq.errors import EaqError

DB_NAME = "study.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL,
    config TEXT NOT NULL,
    seed INTEGER NOT NULL,
    strategy TEXT NOT NULL,
    dataset TEXT NOT NULL,
    method TEXT NOT NULL,
    top1 REAL NOT NULL,
    top5 REAL NOT NULL,
    n_images INTEGER NOT NULL,
    calib_size INTEGER NOT NULL,
    relative_energy REAL NOT NULL,
    energy REAL NOT NULL,
    mac_share REAL NOT NULL,
    memory_share REAL NOT NULL,
    relative_bops REAL NOT NULL,
    bits TEXT NOT NULL,
    plan TEXT NOT NULL,
    layers TEXT NOT NULL,
    info TEXT NOT NULL,
    provenance TEXT NOT NULL,
    seconds REAL NOT NULL,
    calib_seconds REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (model, config, seed)
);
CREATE TABLE IF NOT EXISTS sensitivity (
    model TEXT NOT NULL,
    seed INTEGER NOT NULL,
    measure TEXT NOT NULL,
    layer_index INTEGER NOT NULL,
    layer TEXT NOT NULL,
    kind TEXT NOT NULL,
    w_bits INTEGER NOT NULL,
    a_bits INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (model, seed, measure, layer_index, w_bits, a_bits)
);
"""

JSON_COLUMNS = ("bits", "plan", "layers", "info", "provenance")
VOLATILE_COLUMNS = ("seconds", "calib_seconds", "created", "provenance")
"""Columns that differ between two runs of the same study (timing, time stamps, versions)."""


class Store:
    """The SQLite store of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_SCHEMA)

    @classmethod
    def open_folder(cls, folder: str | Path, *, create: bool = False) -> Store:
        """The store in ``folder`` (created with the folder when ``create``)."""
        folder = Path(folder)
        db = folder / DB_NAME
        if not db.is_file():
            if not create:
                raise EaqError(f"no study database in {folder} (expected {db})")
            folder.mkdir(parents=True, exist_ok=True)
        return cls(db)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # meta ------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def claim(self, fingerprint: str, config: dict) -> bool:
        """Record the study's fingerprint; False if it was there already (same study).

        Raises:
            EaqError: the folder holds a different study.
        """
        have = self.get_meta("fingerprint")
        if have is not None:
            if have != fingerprint:
                name = json.loads(self.get_meta("config") or "{}").get("name", "?")
                raise EaqError(
                    f"{self.path.parent} holds a different study ({name!r}, fingerprint {have}, "
                    f"this one {fingerprint}); choose another --out folder"
                )
            return False
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("fingerprint", fingerprint),
                    ("config", json.dumps(config, sort_keys=True)),
                    ("created", repr(time.time())),
                ],
            )
        return True

    # results ---------------------------------------------------------------------------------
    def done_keys(self) -> set[tuple[str, str, int]]:
        return {tuple(r) for r in self.conn.execute("SELECT model, config, seed FROM results")}

    def add_result(self, row: dict) -> None:
        """Insert one result row in its own transaction."""
        row = dict(row)
        for key in JSON_COLUMNS:
            row[key] = json.dumps(row[key], sort_keys=True)
        row.setdefault("created", time.time())
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(f"INSERT INTO results ({cols}) VALUES ({marks})", tuple(row.values()))

    def results(self) -> list[dict]:
        """Every result row, JSON columns decoded, in insertion-independent order."""
        rows = self.conn.execute("SELECT * FROM results ORDER BY model, config, seed").fetchall()
        out = []
        for r in rows:
            d = dict(r)
            for key in JSON_COLUMNS:
                d[key] = json.loads(d[key])
            out.append(d)
        return out

    # sensitivity -----------------------------------------------------------------------------
    def has_sensitivity(self, model: str, seed: int, measure: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM sensitivity WHERE model = ? AND seed = ? AND measure = ? LIMIT 1",
            (model, seed, measure),
        ).fetchone()
        return row is not None

    def add_sensitivity(self, model: str, seed: int, rows: list[dict]) -> None:
        """All of one (model, seed)'s sensitivities, in one transaction."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT INTO sensitivity VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        model,
                        seed,
                        r["measure"],
                        r["index"],
                        r["layer"],
                        r["kind"],
                        r["w_bits"],
                        r["a_bits"],
                        r["value"],
                    )
                    for r in rows
                ],
            )

    def sensitivity_rows(self, model: str | None = None, seed: int | None = None) -> list[dict]:
        q = "SELECT * FROM sensitivity"
        conds, args = [], []
        if model is not None:
            conds.append("model = ?")
            args.append(model)
        if seed is not None:
            conds.append("seed = ?")
            args.append(seed)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        q += " ORDER BY model, seed, measure, layer_index, w_bits, a_bits"
        return [
            {**dict(r), "index": r["layer_index"]} for r in self.conn.execute(q, args).fetchall()
        ]
