"""Graceful shutdown of a worker: SIGTERM to `tunehouse worker` makes a
training job save a checkpoint and go back to the queue, instead of the
worker waiting hours for it to finish (Celery's warm shutdown) or losing the
steps since the last checkpoint (a kill).

Celery's warm shutdown tells only the parent process; the task runs in a pool
child. The parent marks its shutdown with a file named after itself in the
work dir, and the child looks for its parent's file between training steps.
The name holds the host name too: containers on one volume share pid numbers.
"""

import os
import socket
from pathlib import Path

from domain.settings import Settings


def _flag(settings: Settings, pid: int) -> Path:
    return settings.work_dir / "shutdown" / f"{socket.gethostname()}-{pid}"


def announce(settings: Settings) -> None:
    """In the worker's parent process, when it begins to shut down."""
    flag = _flag(settings, os.getpid())
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()


def clear(settings: Settings) -> None:
    """In the worker's parent process, at start (a file left by an earlier
    process with the same pid) and at exit."""
    _flag(settings, os.getpid()).unlink(missing_ok=True)


def requested(settings: Settings) -> bool:
    """In a pool child: is the worker that runs us shutting down?"""
    return _flag(settings, os.getppid()).exists()
