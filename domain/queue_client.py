"""Sending tasks from the API: by name, so the API never imports worker code."""

import logging
from functools import cached_property

from domain.queue import INFERENCE_QUEUE, TRAIN_QUEUE, create_celery
from domain.settings import Settings

log = logging.getLogger("tunehouse.api")

TRAIN_TASK = "tunehouse.train"
EXPORT_TASK = "tunehouse.export"
CHAT_TASK = "tunehouse.chat"
BATCH_TASK = "tunehouse.batch"
EVALUATION_TASK = "tunehouse.evaluate"

# Which queue each task goes to: training and exports (merged weights) on training workers,
# everything that generates text on inference workers (which keep models loaded).
TASK_QUEUES = {
    TRAIN_TASK: TRAIN_QUEUE,
    EXPORT_TASK: TRAIN_QUEUE,
    CHAT_TASK: INFERENCE_QUEUE,
    BATCH_TASK: INFERENCE_QUEUE,
    EVALUATION_TASK: INFERENCE_QUEUE,
}

_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5}


class TaskQueue:
    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def _celery(self):
        return create_celery(self.settings)

    def send(self, task: str, object_id: str) -> bool:
        """True when the broker took the message. A failure is logged, not
        raised: the row is committed and the recovery loop sends it again."""
        try:
            # Few, quick retries: a broker that is down must not hold the request.
            self._celery.send_task(task, args=[object_id], queue=TASK_QUEUES[task], retry_policy=_RETRY_POLICY)
        except Exception:  # the broker being down must not fail the request
            log.exception("could not enqueue %s for %s", task, object_id)
            return False
        return True

    def send_chat(self, request: dict) -> None:
        """A chat request travels whole in its message (nothing is stored);
        raises when the broker does not take it."""
        self._celery.send_task(CHAT_TASK, args=[request], queue=INFERENCE_QUEUE, retry_policy=_RETRY_POLICY)
