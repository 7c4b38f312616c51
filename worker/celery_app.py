from api.queue import create_celery
from api.settings import get_settings

app = create_celery(get_settings(), include=("worker.tasks",))
