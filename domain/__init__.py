"""tunehouse domain layer: the models, repositories, services and schemas of
each domain (files, jobs, inference, batches, evaluations, exports, ...), the
lease engine of background work (runs/), and the plumbing they stand on
(database, storage, task queue, settings). Imports no FastAPI and no torch:
the HTTP layer (api/) and the workers (worker/) both use it."""
