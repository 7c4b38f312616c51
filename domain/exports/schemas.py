from typing import Literal

from pydantic import BaseModel


class GGUFExportPending(BaseModel):
    object: Literal["fine_tuning.job.gguf_export"] = "fine_tuning.job.gguf_export"
    job_id: str
    quantization: str
    status: str | None
    # The step a worker is at ("converting the weights (q8_0)", ...), once one has started.
    stage: str | None = None
    message: str
