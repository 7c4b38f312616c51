"""tunehouse worker: the Celery tasks that train, infer and evaluate.

Uses the data layer (domain.db, repositories, storage), never the HTTP layer."""
