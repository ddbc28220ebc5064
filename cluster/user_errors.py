"""User errors as one line on rank 0 (exit 2); tracebacks only with --verbose.

A user error is a mistake in what was asked: a config key or value, a missing or foreign file, a
model that does not fit the data. They surface as ValueError (config checks, dataset.json facts,
labels, vocabularies), FileNotFoundError, `trainer.checkpoint_io.CheckpointError`, and
`SystemExit("message")` from the commands. Anything else is a bug and keeps its traceback.

`--verbose` anywhere on the command line (taken out before parsing) keeps tracebacks and the
libraries' start-up chatter (DeepSpeed, torch); it is handed to child processes as AVSIAM_VERBOSE=1.
"""
from __future__ import annotations

import os
import sys

from trainer.engine.quiet import VERBOSE_ENV, is_verbose, quiet_library_logs  # noqa: F401

VERBOSE_FLAG = "--verbose"
USER_ERROR_EXIT = 2


def take_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """argv without --verbose, and whether it (or AVSIAM_VERBOSE=1) was given."""
    verbose = VERBOSE_FLAG in argv or os.environ.get(VERBOSE_ENV) == "1"
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    quiet_library_logs()
    return [a for a in argv if a != VERBOSE_FLAG], verbose


def user_error_message(exc: BaseException) -> str | None:
    """The one line to show for `exc`, or None when it is not a user error."""
    from trainer.checkpoint_io import CheckpointError

    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, str) else None
    if isinstance(exc, (ValueError, FileNotFoundError, CheckpointError)):
        text = str(exc).strip() or type(exc).__name__
        if isinstance(exc, FileNotFoundError) and exc.filename and exc.filename not in text:
            text = f"{text}: {exc.filename}"
        return " ".join(text.split())     # one line
    return None


def report_user_error(command: str, message: str) -> int:
    """Print `avsiam COMMAND: message` on rank 0 (RANK unset or 0); returns the exit status."""
    if os.environ.get("RANK", "0") == "0":
        line = message if message.startswith("avsiam ") else f"avsiam {command}: {message}"
        print(f"{line} (--verbose: traceback)", file=sys.stderr, flush=True)
    return USER_ERROR_EXIT
