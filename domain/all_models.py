"""Imports every table, so foreign keys between them resolve in any process
(a worker may touch files and batches without ever importing users)."""

import domain.auth.models  # noqa: F401
import domain.batches.models  # noqa: F401
import domain.evaluations.models  # noqa: F401
import domain.files.models  # noqa: F401
import domain.jobs.models  # noqa: F401
import domain.exports.models  # noqa: F401
import domain.workers.models  # noqa: F401
import domain.sharing.models  # noqa: F401
import domain.connections.models  # noqa: F401
