"""Graceful shutdown of a worker: SIGTERM to `tunehouse worker` makes a
training job save a checkpoint and go back to the queue, instead of the
worker waiting hours for it to finish (Celery's warm shutdown) or losing the
steps since the last checkpoint (a kill).

Celery's warm shutdown tells only the parent process; on a training worker
the task runs in a pool child. The parent marks its shutdown with a file
named after itself in the work dir, and the child looks for its parent's file
between training steps. An inference worker runs its tasks in threads of the
worker process itself (Celery's threads pool), so a task there looks for its
own process's file. The name holds the host name too: containers on one
volume share pid numbers.
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
    """In a task: is the worker that runs us shutting down? The worker is the
    parent of a prefork pool child, or this very process in a threads pool."""
    return _flag(settings, os.getppid()).exists() or _flag(settings, os.getpid()).exists()
