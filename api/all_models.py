"""Imports every table, so foreign keys between them resolve in any process
(a worker may touch files and batches without ever importing users)."""

import api.auth.models  # noqa: F401
import api.batches.models  # noqa: F401
import api.evaluations.models  # noqa: F401
import api.files.models  # noqa: F401
import api.jobs.models  # noqa: F401
