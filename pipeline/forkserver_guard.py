"""Imported only by the workers' forkserver, at its start (`WorkerPool` preloads it): it gets
SIGKILL as its parent-death signal, so it ends the moment the main process does.

Without this the forkserver notices the main process's death only when its last worker is gone,
then exits like any Python process holding torch: seconds of interpreter teardown, more on a
loaded node, during which a job killed with `kill -9 PID` still has a process alive. The main
process names itself in `FORKSERVER_PARENT_ENV` before the forkserver starts; the guard acts only
in a direct child of that process, and exits at once if that process died before the guard ran.
"""
from __future__ import annotations

import os

from pipeline.bounded_process import FORKSERVER_PARENT_ENV, die_with_parent


def _guard() -> None:
    parent = os.environ.get(FORKSERVER_PARENT_ENV, "")
    if parent.isdigit() and os.getppid() == int(parent):
        die_with_parent(int(parent))


_guard()
