"""The results store: one row per (model, config, seed), in SQLite or PostgreSQL.

By default the store is one SQLite file in the run folder, written by the study's driver
alone. A PostgreSQL database (``eaq study --store postgresql://...``) serves several drivers or a
long-lived dashboard, with the same schema, resume and fingerprint rules: one study per
database (or per schema, with ``?options=-csearch_path=NAME`` in the URL).

Each row is written in its own transaction, after its evaluation, so a killed study leaves
only whole rows. The study's fingerprint is stored on creation; opening the store with a
different study is refused.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

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
CREATE TABLE IF NOT EXISTS plan_scores (
    model TEXT NOT NULL,
    seed INTEGER NOT NULL,
    plan_sha256 TEXT NOT NULL,
    loss REAL NOT NULL,
    PRIMARY KEY (model, seed, plan_sha256)
);
"""

RESULT_COLUMNS = (
    "model", "config", "seed", "strategy", "dataset", "method", "top1", "top5", "n_images",
    "calib_size", "relative_energy", "energy", "mac_share", "memory_share", "relative_bops",
    "bits", "plan", "layers", "info", "provenance", "seconds", "calib_seconds", "created",
)  # fmt: skip
"""The columns of a result row (the ``results`` table above)."""
JSON_COLUMNS = ("bits", "plan", "layers", "info", "provenance")
VOLATILE_COLUMNS = ("seconds", "calib_seconds", "created", "provenance")
"""Columns that differ between two runs of the same study (timing, time stamps, versions)."""


class _Sqlite:
    """SQLite: the run folder's file."""

    def __init__(self, path: Path) -> None:
        self.where = str(path.parent)
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_SCHEMA)

    def query(self, sql: str, args=()) -> list[dict]:
        return [dict(r) for r in self.conn.execute(sql, args).fetchall()]

    def execute(self, sql: str, args=()) -> None:
        self.conn.execute(sql, args)

    def executemany(self, sql: str, rows) -> None:
        self.conn.executemany(sql, rows)

    @contextmanager
    def transaction(self):
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            yield

    def close(self) -> None:
        self.conn.close()


class _Postgres:
    """PostgreSQL through psycopg: the same statements, ``%s`` for ``?``."""

    def __init__(self, url: str) -> None:
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError:
            raise EaqError(
                "a PostgreSQL store needs psycopg; install it with `pip install psycopg[binary]`"
            ) from None
        parsed = urlparse(url)
        self.where = f"{parsed.hostname}:{parsed.port or 5432}{parsed.path}"
        try:
            self.conn = psycopg.connect(url, autocommit=True, row_factory=dict_row)
        except psycopg.Error as e:
            text = " ".join(str(e).split())[:200]
            raise EaqError(f"cannot connect to PostgreSQL at {self.where}: {text}") from None
        for statement in _SCHEMA.replace(" REAL ", " DOUBLE PRECISION ").split(";"):
            if statement.strip():
                self.conn.execute(statement)

    def query(self, sql: str, args=()) -> list[dict]:
        return list(self.conn.execute(sql.replace("?", "%s"), args).fetchall())

    def execute(self, sql: str, args=()) -> None:
        self.conn.execute(sql.replace("?", "%s"), args)

    def executemany(self, sql: str, rows) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), list(rows))

    @contextmanager
    def transaction(self):
        with self.conn.transaction():
            yield

    def close(self) -> None:
        self.conn.close()


def is_database_url(target: str | Path) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


class Store:
    """The results store of one study: SQLite in a run folder, or a PostgreSQL database."""

    def __init__(self, db) -> None:
        self.db = db

    @classmethod
    def open(cls, folder: str | Path, *, url: str | None = None, create: bool = False) -> Store:
        """The PostgreSQL store at ``url``, or else the SQLite store in ``folder``."""
        if url is not None:
            if not is_database_url(url):
                raise EaqError(f"--store {url!r} must be a postgresql://USER@HOST:PORT/DB URL")
            return cls(_Postgres(url))
        return cls.open_folder(folder, create=create)

    @classmethod
    def open_folder(cls, folder: str | Path, *, create: bool = False) -> Store:
        """The SQLite store in ``folder`` (created with the folder when ``create``)."""
        folder = Path(folder)
        db = folder / DB_NAME
        if not db.is_file():
            if not create:
                raise EaqError(f"no study database in {folder} (expected {db})")
            folder.mkdir(parents=True, exist_ok=True)
        return cls(_Sqlite(db))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # meta ------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self.db.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def record_session(self, session: dict) -> None:
        """Record one ``eaq study`` invocation (start, wall seconds so far, rows written) in the
        ``sessions`` list in meta, replacing the entry with the same ``started``: called after
        every row, so a killed run's time is kept up to its last row
        (benchmarks/study_overhead.py reads it)."""
        sessions = [s for s in self.sessions() if s["started"] != session["started"]]
        sessions.append(session)
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                ("sessions", json.dumps(sessions)),
            )

    def sessions(self) -> list[dict]:
        """The ``eaq study`` invocations recorded by :meth:`record_session`, oldest first."""
        return json.loads(self.get_meta("sessions") or "[]")

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
                    f"{self.db.where} holds a different study ({name!r}, fingerprint {have}, "
                    f"this one {fingerprint}); choose another --out folder or --store"
                )
            return False
        with self.db.transaction():
            self.db.executemany(
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
        rows = self.db.query("SELECT model, config, seed FROM results")
        return {(r["model"], r["config"], r["seed"]) for r in rows}

    def add_result(self, row: dict) -> None:
        """Insert one result row in its own transaction."""
        self.add_results([row])

    def add_results(self, rows: list[dict]) -> None:
        """Insert result rows (the columns of :data:`RESULT_COLUMNS`, ``created`` optional)
        in one transaction: all or none."""
        encoded = []
        for row in rows:
            row = {"created": time.time(), **row}
            for key in JSON_COLUMNS:
                row[key] = json.dumps(row[key], sort_keys=True)
            encoded.append(tuple(row[c] for c in RESULT_COLUMNS))
        cols = ", ".join(RESULT_COLUMNS)
        marks = ", ".join("?" for _ in RESULT_COLUMNS)
        with self.db.transaction():
            self.db.executemany(f"INSERT INTO results ({cols}) VALUES ({marks})", encoded)

    def results(self) -> list[dict]:
        """Every result row, JSON columns decoded, in insertion-independent order."""
        rows = self.db.query("SELECT * FROM results ORDER BY model, config, seed")
        out = []
        for r in rows:
            d = dict(r)
            for key in JSON_COLUMNS:
                d[key] = json.loads(d[key])
            out.append(d)
        return out

    # sensitivity -----------------------------------------------------------------------------
    def has_sensitivity(self, model: str, seed: int, measure: str) -> bool:
        rows = self.db.query(
            "SELECT 1 FROM sensitivity WHERE model = ? AND seed = ? AND measure = ? LIMIT 1",
            (model, seed, measure),
        )
        return bool(rows)

    def add_sensitivity(self, model: str, seed: int, rows: list[dict]) -> None:
        """All of one (model, seed)'s sensitivities, in one transaction."""
        with self.db.transaction():
            self.db.executemany(
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

    # measured losses of candidate plans (a budget's select: loss) ----------------------------
    def plan_scores(self, model: str, seed: int) -> dict[str, float]:
        """``{plan_sha256: loss}`` of the candidate plans scored so far for (model, seed)."""
        rows = self.db.query(
            "SELECT plan_sha256, loss FROM plan_scores WHERE model = ? AND seed = ?", (model, seed)
        )
        return {r["plan_sha256"]: r["loss"] for r in rows}

    def add_plan_score(self, model: str, seed: int, plan_sha256: str, loss: float) -> None:
        self.db.execute(
            "INSERT INTO plan_scores VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (model, seed, plan_sha256, loss),
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
        return [{**r, "index": r["layer_index"]} for r in self.db.query(q, args)]
