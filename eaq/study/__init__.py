"""Studies: YAML configs, the SQLite results store, the runner and the report."""

from eaq.study.config import (
    ConfigEntry,
    ModelEntry,
    SensitivityConfig,
    StudyConfig,
    load_study,
    parse_study,
)
from eaq.study.report import summarize, write_report
from eaq.study.runner import RunSummary, run_study
from eaq.study.store import DB_NAME, VOLATILE_COLUMNS, Store

__all__ = [
    "DB_NAME",
    "VOLATILE_COLUMNS",
    "ConfigEntry",
    "ModelEntry",
    "RunSummary",
    "SensitivityConfig",
    "Store",
    "StudyConfig",
    "load_study",
    "parse_study",
    "run_study",
    "summarize",
    "write_report",
]
