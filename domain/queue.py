"""The Celery application both sides share: the API sends tasks by name, the
worker (worker/celery_app.py) registers them. Nothing here imports the ML stack."""

from celery import Celery

from domain.settings import Settings

# Queues: training and inference run on different workers in production.
TRAIN_QUEUE = "train"
INFERENCE_QUEUE = "inference"
DEFAULT_QUEUE = "default"
ALL_QUEUES = (DEFAULT_QUEUE, TRAIN_QUEUE, INFERENCE_QUEUE)


def create_celery(settings: Settings, include: tuple[str, ...] = ()) -> Celery:
    app = Celery("tunehouse", broker=settings.broker_url, include=list(include))
    app.conf.update(
        # A task is acknowledged only when it ends, and given back if its worker
        # dies: a killed worker's job is redelivered, not lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A fresh process per task: a training job's memory (and CUDA context)
        # is gone when it ends, and the parent never touches CUDA.
        worker_max_tasks_per_child=1,
        task_default_queue=DEFAULT_QUEUE,
        # State lives in the database; Celery results would be a second copy.
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if settings.broker_url.startswith("filesystem://"):
        folders = {name: settings.broker_dir / name for name in ("queue", "processed", "control")}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        # Kombu's own transport can lose a message to a consumer that reads it
        # half-written (domain/filesystem_broker.py).
        app.conf.broker_transport = "domain.filesystem_broker:Transport"
        app.conf.broker_transport_options = {
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "processed_folder": str(folders["processed"]),
            "store_processed": False,
            # The default 1 s would add up to a second to every chat request.
            "polling_interval": 0.05,
            # Without this kombu writes its exchange files to ./control in the cwd.
            "control_folder": str(folders["control"]),
        }
    return app
