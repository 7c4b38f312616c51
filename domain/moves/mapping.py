"""An OpenAI-compatible provider's fine-tuning job as a tunehouse job request.

Pure: a provider's job object (OpenAI's shape: ``method``, ``hyperparameters``,
``suffix``, ``seed``, files, ``fine_tuned_model``) and the base model the user
picked in, the request body of ``POST /v1/fine_tuning/jobs`` and one
``MappingEntry`` per field out: carried over, changed or dropped, and why.

What a value means on each side decides its fate (docs/moving.md lists the
same rules):
- n_epochs, batch_size, beta and the method mean the same thing here as at
  OpenAI: carried over (checked against tunehouse's ranges).
- learning_rate_multiplier scales each platform's own base rate. OpenAI's is
  unpublished and belongs to its models and training method; tunehouse's is
  2e-4 for LoRA (5e-5 for DPO, domain/jobs/hyperparameters.py). So the number
  is carried over only from another tunehouse (its job object has
  ``hyperparameter_details``), where it scales the same base rate; from others
  it is left to auto.
- Values the provider chose itself (``"auto"``, or origin other than "user"
  in a tunehouse's details) stay auto: tunehouse's rule resolves them again on
  the same data.
"""

import re
from dataclasses import dataclass, field
from typing import Any

from domain.jobs.hyperparameters import (
    BASE_LEARNING_RATE, DPO_BASE_LEARNING_RATE, DPO_NAMES, EXTRA_KEY, EXTRA_NAMES, HyperparameterError,
    METHODS, OPENAI_NAMES, parse_hyperparameters,
)
from domain.metadata import MAX_PAIRS, MAX_VALUE_LENGTH
from domain.moves.schemas import MappingEntry

# Where a moved job records its origin (metadata is flat string pairs, so the
# contract's "moved_from" object is three keys).
ORIGIN_CONNECTION = "moved_from.connection"
ORIGIN_JOB = "moved_from.provider_job_id"
ORIGIN_MODEL = "moved_from.provider_model"
ORIGIN_KEYS = (ORIGIN_CONNECTION, ORIGIN_JOB, ORIGIN_MODEL)

MAX_SUFFIX = 40  # CreateJobRequest.suffix
MAX_SEED = 2**31 - 1
# Extensions a tunehouse provider's user set that belong to its base model, not to the data.
_MODEL_BOUND = ("target_modules", "max_seq_length")


@dataclass
class MappedJob:
    """A provider job as a tunehouse request (without its files, which the
    move fills in), the mapping of every field, and why it cannot move if not."""

    request: dict[str, Any]
    mapping: list[MappingEntry] = field(default_factory=list)
    problem: str | None = None


def provider_method(job: dict) -> str:
    method = job.get("method")
    if isinstance(method, dict) and isinstance(method.get("type"), str):
        return method["type"]
    return "supervised"


def provider_hyperparameters(job: dict) -> dict[str, Any]:
    """OpenAI's newer method.{type}.hyperparameters, else the top-level object."""
    method = job.get("method")
    if isinstance(method, dict):
        settings = method.get(provider_method(job))
        if isinstance(settings, dict) and isinstance(settings.get("hyperparameters"), dict):
            return settings["hyperparameters"]
    hyperparameters = job.get("hyperparameters")
    return hyperparameters if isinstance(hyperparameters, dict) else {}


def is_tunehouse(job: dict) -> bool:
    """Another tunehouse: its job objects carry every hyperparameter's origin."""
    return "hyperparameter_details" in job


def _origin(job: dict, name: str) -> str | None:
    details = job.get("hyperparameter_details")
    if isinstance(details, dict) and isinstance(details.get(name), dict):
        return details[name].get("origin")
    return None


def _checked(name: str, value: Any, method: str) -> str | None:
    """None when tunehouse accepts `value` for `name`, else why not."""
    nested = {EXTRA_KEY: {name: value}} if name in EXTRA_NAMES else {name: value}
    try:
        parse_hyperparameters(nested, method=method)
    except HyperparameterError as exc:
        return exc.message
    return None


def _base_rate(method: str) -> float:
    return DPO_BASE_LEARNING_RATE if method == "dpo" else BASE_LEARNING_RATE


_SAME_MEANING = {
    "n_epochs": "both count full passes over the training examples",
    "batch_size": "both count examples per optimizer step",
    "beta": "both are the DPO loss's beta (how far the fine-tune may move from the starting weights)",
}


def _hyperparameter(job: dict, name: str, method: str, train_examples: int | None) -> tuple[Any, MappingEntry]:
    """The value to request (None: auto) and its mapping entry."""
    given = provider_hyperparameters(job).get(name, "auto")
    entry = MappingEntry(field=name, provider_value=given, value="auto", reason="")
    origin = _origin(job, name)
    if given is None or given == "auto":
        entry.reason = "auto on the provider: tunehouse's auto rule chooses it (docs/hyperparameters.md)"
        return None, entry
    if origin is not None and origin != "user":
        entry.reason = (f"the provider chose it ({origin}): tunehouse's auto rule chooses it again on the same "
                        "data and the new base")
        return None, entry
    if name == "learning_rate_multiplier" and not is_tunehouse(job):
        entry.reason = (f"not carried over: the provider's multiplier scales the provider's own base rate for its "
                        f"model and training method, which it does not publish; here it would scale "
                        f"{_base_rate(method):g} ({'DPO' if method == 'dpo' else 'LoRA'}) into an unrelated rate. "
                        f"Auto: 1 x {_base_rate(method):g}")
        return None, entry
    problem = _checked(name, given, method)
    if problem is not None:
        entry.reason = f"dropped: outside tunehouse's range ({problem}); auto instead"
        return None, entry
    if name == "batch_size" and train_examples is not None and 0 < train_examples < given:
        entry.value = train_examples
        entry.reason = (f"changed: {_SAME_MEANING[name]}, but the training file's TRAIN split here has only "
                        f"{train_examples} examples and a batch cannot be larger")
        return train_examples, entry
    entry.value = given
    if name == "learning_rate_multiplier":
        entry.reason = (f"carried over: the provider is a tunehouse, whose multiplier scales the same base rate "
                        f"({_base_rate(method):g} for {method})")
    else:
        entry.reason = f"carried over: {_SAME_MEANING[name]}"
    return given, entry


def _tunehouse_extras(job: dict, method: str) -> tuple[dict[str, Any], list[MappingEntry]]:
    """A tunehouse provider's extensions that its user set: the data-bound ones carry over."""
    shown = provider_hyperparameters(job)
    extras, entries = {}, []
    for name in EXTRA_NAMES:
        origin = _origin(job, name)
        user_set = origin == "user" if origin is not None else (
            job.get("hyperparameter_details") is None and shown.get(name) not in (None, "auto"))
        if not user_set or name not in shown:
            continue
        value = shown[name]
        if name in _MODEL_BOUND:
            entries.append(MappingEntry(field=name, provider_value=value, value="auto", reason=(
                "dropped: it belongs to the provider's base model (module names, context length); auto for the new base")))
            continue
        problem = _checked(name, value, method)
        if problem is not None:
            entries.append(MappingEntry(field=name, provider_value=value, value="auto",
                                        reason=f"dropped: {problem}; auto instead"))
            continue
        extras[name] = value
        entries.append(MappingEntry(field=name, provider_value=value, value=value,
                                    reason="carried over: set by the user on the provider (another tunehouse), same meaning"))
    return extras, entries


def _suffix(job: dict) -> tuple[str | None, MappingEntry]:
    given = job.get("user_provided_suffix") or job.get("suffix")
    entry = MappingEntry(field="suffix", provider_value=given, value=None, reason="")
    if not isinstance(given, str) or not given:
        entry.reason = "none on the provider"
        return None, entry
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", given)[:MAX_SUFFIX]
    entry.value = value
    entry.reason = ("carried over: it names the fine-tune (ft:{base}:{user}:{suffix}:{job})" if value == given else
                    f"changed: tunehouse's suffix is at most {MAX_SUFFIX} of A-Z a-z 0-9 _ . - (':' separates "
                    "the parts of a model name)")
    return value, entry


def _seed(job: dict) -> tuple[int | None, MappingEntry]:
    given = job.get("seed")
    entry = MappingEntry(field="seed", provider_value=given, value=None, reason="")
    if isinstance(given, int) and not isinstance(given, bool) and 0 <= given <= MAX_SEED:
        entry.value = given
        entry.reason = ("carried over: it seeds tunehouse's data order and adapter initialization; the same seed "
                        "does not reproduce the provider's run")
        return given, entry
    entry.reason = "none usable on the provider (tunehouse takes 0 to 2^31-1): a random seed, recorded on the job"
    return None, entry


def origin_metadata(connection: str, job: dict) -> dict[str, str]:
    model = job.get("fine_tuned_model")
    return {ORIGIN_CONNECTION: connection, ORIGIN_JOB: str(job.get("id", ""))[:MAX_VALUE_LENGTH],
            ORIGIN_MODEL: (model if isinstance(model, str) else "")[:MAX_VALUE_LENGTH]}


def _metadata(job: dict, connection: str) -> tuple[dict[str, str], MappingEntry]:
    given = job.get("metadata") if isinstance(job.get("metadata"), dict) else {}
    origin = origin_metadata(connection, job)
    kept = {key: value for key, value in given.items()
            if isinstance(key, str) and isinstance(value, str) and key not in origin}
    room = MAX_PAIRS - len(origin)
    value = dict(list(kept.items())[:room]) | origin
    reason = "carried over, with the job's origin added (moved_from.*: connection, provider job, provider model)"
    if len(kept) > room:
        reason += f"; {len(kept) - room} pair(s) dropped: metadata holds at most {MAX_PAIRS}"
    return value, MappingEntry(field="metadata", provider_value=given or None, value=value, reason=reason)


def map_job(job: dict, *, base_model: str, connection: str, train_examples: int | None = None,
            held_out: int | None = None) -> MappedJob:
    """`job`: the provider's job object. `train_examples` and `held_out`: the
    training file's TRAIN and TEST split sizes once it is validated here (they
    make the batch size fit and the training file's entry exact)."""
    method = provider_method(job)
    mapped = MappedJob(request={"model": base_model})
    entries = mapped.mapping
    entries.append(MappingEntry(
        field="model", provider_value=job.get("model"), value=base_model,
        reason="the base you picked (the provider's bears the same name)" if job.get("model") == base_model else
        "changed: the provider's base weights are not available; the open-weight base you picked"))
    if method not in METHODS:
        mapped.problem = f"method '{method}' cannot move: tunehouse offers supervised and DPO fine-tuning only"
        entries.append(MappingEntry(field="method", provider_value=method, value=None, reason=mapped.problem))
        return mapped
    entries.append(MappingEntry(field="method", provider_value=method, value=method,
                                reason="carried over: the same training method"))
    entries.append(MappingEntry(
        field="training_file", provider_value=job.get("training_file"), value=None,
        reason=("carried over as a file here with the same lines, validated as any upload; tunehouse trains on its "
                "TRAIN split and holds its TEST split back for evaluation ("
                + (f"{train_examples} and {held_out} examples" if train_examples is not None else
                   "lines with a \"split\" key choose, the others a seeded 10% draw")
                + "), where the provider trained on every line")))
    if job.get("validation_file"):
        entries.append(MappingEntry(field="validation_file", provider_value=job["validation_file"], value=None,
                                    reason="carried over as a file here: eval losses and the comparison use it"))
    else:
        entries.append(MappingEntry(field="validation_file", provider_value=None, value=None,
                                    reason="none on the provider: the training file's TEST split is held out instead"))

    values, extras = {}, {}
    names = OPENAI_NAMES + DPO_NAMES if method == "dpo" else OPENAI_NAMES
    for name in names:
        value, entry = _hyperparameter(job, name, method, train_examples)
        entries.append(entry)
        if value is not None:
            values[name] = value
    if is_tunehouse(job):
        extras, extra_entries = _tunehouse_extras(job, method)
        entries.extend(extra_entries)
    if "adapter" not in extras:
        entries.append(MappingEntry(
            field="adapter", provider_value=None, value="auto",
            reason="not in the provider's job: tunehouse trains LoRA adapters (QLoRA on CUDA) on the open-weight base"))
    if extras:
        values[EXTRA_KEY] = extras
    if values:
        mapped.request["method"] = {"type": method, method: {"hyperparameters": values}}
    elif method == "dpo":
        mapped.request["method"] = {"type": "dpo"}

    suffix, entry = _suffix(job)
    entries.append(entry)
    if suffix:
        mapped.request["suffix"] = suffix
    seed, entry = _seed(job)
    entries.append(entry)
    if seed is not None:
        mapped.request["seed"] = seed
    mapped.request["metadata"], entry = _metadata(job, connection)
    entries.append(entry)
    if job.get("integrations"):
        entries.append(MappingEntry(field="integrations", provider_value=job["integrations"], value=None,
                                    reason="dropped: tunehouse has no integrations; its own metrics page shows training"))
    fine_tuned = job.get("fine_tuned_model") if isinstance(job.get("fine_tuned_model"), str) else None
    entries.append(MappingEntry(
        field="fine_tuned_model", provider_value=fine_tuned,
        value=f"conn:{connection}/{fine_tuned}" if fine_tuned else None,
        reason=("the provider's fine-tune, compared with the new one through the connection" if fine_tuned else
                "none yet on the provider (its job has not succeeded): nothing to compare with")))
    return mapped
