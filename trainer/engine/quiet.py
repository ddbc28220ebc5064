"""Library start-up and conversion chatter, hidden unless --verbose (AVSIAM_VERBOSE=1).

DeepSpeed prints "... built successfully" when it sets up its communication ops and five lines per
consolidated checkpoint ("Processing zero checkpoint ...", "Reconstructed fp32 state dict ...");
torch warns "No CUDA runtime is found, using CUDA_HOME" on CPU machines. None of it is about the
user's run. `quiet_library_logs()` mutes the loggers; `library_prints()` swallows what the library
prints inside it (errors still raise).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os

VERBOSE_ENV = "AVSIAM_VERBOSE"
MUTED_LOGGERS = ("torch.utils.cpp_extension",)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet_library_logs() -> None:
    if not is_verbose():
        for name in MUTED_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def library_prints():
    """Inside: the libraries' prints to stdout/stderr go nowhere (unless verbose)."""
    if is_verbose():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield
