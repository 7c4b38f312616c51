"""What a succeeded job's weights are: a LoRA/QLoRA adapter on its base model,
or (adapter "full") the whole model, which has no adapter to download or
attach; its merged-weights download is the model itself."""

from domain.jobs.models import FineTuningJob


def is_full_fine_tune(job: FineTuningJob) -> bool:
    resolved = (job.hyperparameters or {}).get("adapter") or {}
    return resolved.get("value") == "full"


def merged_weights_key(job_id: str) -> str:
    """Where a job's merged weights are stored (a merge export, or a full fine-tune's model)."""
    return f"jobs/{job_id}/merged.zip"


def no_adapter_message(job: FineTuningJob) -> str:
    return (
        f"Job '{job.id}' is a full fine-tune (adapter 'full'): every weight was trained, so there is "
        f"no adapter; download the whole model from /v1/fine_tuning/jobs/{job.id}/merged."
    )


def not_servable_message(model: str, job: FineTuningJob) -> str:
    return (
        f"Model '{model}' is a full fine-tune; this deployment serves base models and LoRA/QLoRA "
        f"fine-tunes only (chat, batches, evaluations). Download its weights from "
        f"/v1/fine_tuning/jobs/{job.id}/merged and serve them elsewhere, or add them as a base model "
        "(TUNEHOUSE_BASE_MODELS, path:)."
    )
