import api.all_models  # noqa: F401  (every table, so foreign keys resolve in workers)
from api.queue import create_celery
from api.settings import get_settings

app = create_celery(get_settings(), include=("worker.tasks",))
