"""tunehouse worker: the Celery tasks that train, infer, evaluate and export,
all on one lease engine (worker/runs.py). Uses the domain layer (domain/),
never the HTTP layer (api/)."""
