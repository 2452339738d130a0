"""``eaq`` entry point: sub-commands, and one place that turns user errors into exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys

from eaq import __version__
from eaq.cli import (
    energy_cmd,
    evaluate_cmd,
    export_cmd,
    methods_cmd,
    models_cmd,
    quantize_cmd,
    report_cmd,
    sensitivity_cmd,
    study_cmd,
    tables_cmd,
    train_cmd,
)
from eaq.errors import EaqError

COMMANDS = (
    models_cmd,
    quantize_cmd,
    evaluate_cmd,
    export_cmd,
    energy_cmd,
    train_cmd,
    methods_cmd,
    sensitivity_cmd,
    study_cmd,
    report_cmd,
    tables_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eaq",
        description=(
            "Energy-aware post-training quantization and mixed precision for PyTorch vision "
            "models. Run `eaq COMMAND --help` for a command's options."
        ),
    )
    parser.add_argument("--version", action="version", version=f"eaq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message comes (not when it was made)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _log_to_stderr() -> None:
    """The library logs through ``logging`` (logger ``eaq``); the command shows INFO lines."""
    logger = logging.getLogger("eaq")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    _log_to_stderr()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except EaqError as e:
        print(f"eaq: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eaq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
