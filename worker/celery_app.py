from pathlib import Path

import logging
import threading

from celery.signals import worker_init, worker_ready, worker_shutdown, worker_shutting_down

import domain.all_models  # noqa: F401  (every table, so foreign keys resolve in workers)
from domain.queue import create_celery
from domain.settings import get_settings
from worker import shutdown

app = create_celery(get_settings(), include=("worker.tasks",))


def preload_ml_stack() -> None:
    """Import (not initialise) torch and transformers in the worker's parent:
    each task's pool process is forked from it with them loaded, instead of
    spending seconds importing them per job. CUDA stays untouched here (torch
    initialises it lazily, in the child that uses it). On a machine with an
    NVIDIA GPU, peft is left to the child: it imports bitsandbytes, which may
    probe the GPU on import, and a CUDA driver initialised before a fork is
    unusable in the child. Without one there is nothing to initialise, and
    importing peft once here saves every job 2-3 s."""
    import torch  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    import worker.training.job  # noqa: F401
    import worker.training.recipe  # noqa: F401

    if not has_nvidia_gpu():
        import peft  # noqa: F401


def has_nvidia_gpu() -> bool:
    """Whether the NVIDIA driver's device files are here, asked without
    touching CUDA (torch.cuda.is_available() would initialise the driver)."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


@worker_init.connect
def _clear_stale_shutdown_flag(**_kwargs) -> None:
    shutdown.clear(get_settings())


@worker_shutting_down.connect
def _announce_shutdown(**_kwargs) -> None:
    # Runs in the parent on SIGTERM/SIGINT: a running training job checkpoints
    # and hands itself back (worker/training/job.py), so the warm shutdown is quick.
    shutdown.announce(get_settings())


@worker_shutdown.connect
def _remove_shutdown_flag(**_kwargs) -> None:
    shutdown.clear(get_settings())


# The name this worker reported its device under (worker/devices.py), so that
# its row goes when it stops.
_reported_as: list[str] = []


def _consumed_queues(consumer) -> str:
    try:
        return ",".join(sorted(consumer.app.amqp.queues.consume_from))
    except AttributeError:
        return ""


@worker_ready.connect
def _report_device(sender=None, **_kwargs) -> None:
    """Tell the API what this worker computes on (and which base models it can
    size), in a thread: on a GPU machine the device is asked in a child
    interpreter, which takes seconds the worker need not wait for."""
    if sender is None:
        return
    from worker.devices import report_worker

    name, queues = sender.hostname, _consumed_queues(sender)
    _reported_as.append(name)

    def report() -> None:
        try:
            report_worker(get_settings(), name, queues)
        except Exception:  # noqa: BLE001 - the fit check then says "unknown"; the worker works on
            logging.getLogger("tunehouse.worker").exception("could not report this worker's device")

    threading.Thread(target=report, name="report-device", daemon=True).start()


@worker_shutdown.connect
def _forget_device(**_kwargs) -> None:
    from worker.devices import forget_worker

    for name in _reported_as:
        try:
            forget_worker(get_settings(), name)
        except Exception:  # noqa: BLE001 - a stale row only makes the fit check look at a worker gone
            logging.getLogger("tunehouse.worker").warning("could not remove worker %s's device row", name)
