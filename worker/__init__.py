"""tunehouse worker: the Celery tasks that train, infer and evaluate.

Uses the data layer (api.db, repositories, storage), never the HTTP layer."""
