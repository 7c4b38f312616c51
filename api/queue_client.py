"""Sending tasks from the API: by name, so the API never imports worker code."""

import logging
from functools import cached_property

from api.queue import TRAIN_QUEUE, create_celery
from api.settings import Settings

log = logging.getLogger("tunehouse.api")

TRAIN_TASK = "tunehouse.train"
MERGE_TASK = "tunehouse.merge"


class TaskQueue:
    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def _celery(self):
        return create_celery(self.settings)

    def send(self, task: str, job_id: str, queue: str = TRAIN_QUEUE) -> bool:
        """True when the broker took the message. A failure is logged, not
        raised: the job row is committed and the recovery loop sends it again."""
        try:
            # Few, quick retries: a broker that is down must not hold the request.
            self._celery.send_task(
                task, args=[job_id], queue=queue, retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5}
            )
        except Exception:  # the broker being down must not fail the request
            log.exception("could not enqueue %s for %s", task, job_id)
            return False
        return True
