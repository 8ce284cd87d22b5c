"""What every stage's `main()` shares: `--params` / `--debug`, the whole params file checked
before any work, user errors as one line instead of a traceback, and the summary on stdout.

    def main(argv=None):
        args = parser().parse_args(argv)           # cli.parser(__doc__) + the stage's paths
        cli.run_main(args, lambda: cli.show(run(*inputs(args))), errors=(ExportError,))

A user error (a bad params file, a missing input, an unreachable tracking store, a cluster
without the resources asked for) is logged as one line, `... pipeline.<stage>: error: <message>`
(on stderr), and the stage exits with status 1; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import layout
from pipeline.params import validate_file

# Raised for what a user got wrong; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
)


def parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser with `--params` and `--debug` (first line of `description`)."""
    ap = argparse.ArgumentParser(description=(description or "").strip().split("\n")[0])
    ap.add_argument("--params", type=Path, default=layout.PARAMS, help="default: %(default)s")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return ap


def run_main(
    args: argparse.Namespace,
    body: Callable[[], Any],
    errors: tuple[type[BaseException], ...] = (),
    log_format: str = "%(levelname)s %(name)s: %(message)s",
) -> Any:
    """Set up logging, validate `args.params` as a whole, then `body()` -> its result.

    `errors`: the stage's own user-error types, reported like `USER_ERRORS`."""
    logging.basicConfig(level=logging.INFO, format=log_format)
    try:
        validate_file(args.params)
        return body()
    except (*USER_ERRORS, *errors) as e:
        if getattr(args, "debug", False):
            raise
        stem = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
        name = (
            f"pipeline.{stem}" if (Path(__file__).parent / f"{stem}.py").is_file() else "pipeline"
        )
        logging.getLogger(name).error("error: %s (--debug for the traceback)", one_line(e))
        sys.exit(1)


def show(summary: dict[str, Any]) -> dict[str, Any]:
    """Write a stage's summary to stdout as JSON (what a user running it by hand reads; the log
    goes to stderr) -> the summary."""
    sys.stdout.write(json.dumps(summary, indent=1) + "\n")
    return summary


# What torch's DataLoader puts in the message of an error it re-raises from a worker process.
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (its type when the message is empty)."""
    text = str(error)
    if _WORKER_TRACEBACK in text:  # re-raised from a DataLoader worker: the original message
        last = text.rstrip().rsplit("\n", 1)[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    text = " ".join(text.split())
    if isinstance(error, (FileNotFoundError, NotADirectoryError)) and error.filename:
        text = text if str(error.filename) in text else f"{text}: {error.filename}"
    return text or type(error).__name__
