"""A fine-tune's model card: README.md in Hugging Face's model-card form and
its loss and learning-rate curves as a PNG, made from what the service
recorded (the recipe, the metrics events, the automatic evaluation).

The card is made when asked for, so it shows the evaluation once it has
finished; the same records always give the same bytes (no dates of making,
sorted tables, a PNG without timestamps). Used by the API (the card, the
adapter download) and by workers that pack weights (merged, GGUF): no HTTP,
no torch here; matplotlib is imported only when a PNG is drawn.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from typing import IO, Any

import yaml
from sqlalchemy.orm import Session

from domain.evaluations.models import Evaluation
from domain.evaluations.repository import EvaluationRepository
from domain.jobs.models import FineTuningJob
from domain.jobs.repository import JobRepository
from domain.jobs.training_metrics import metrics_by_step
from domain.jobs.weights import is_full_fine_tune
from domain.settings import Settings
from domain.storage import Storage

CARD_NAME = "README.md"
CURVES_NAME = "training_curves.png"

# Licenses of base models whose license we know, by Hugging Face repo id prefix
# (the card's `license` is left out for any other base rather than guessed).
KNOWN_LICENSES: dict[str, str] = {
    "HuggingFaceTB/SmolLM2-": "apache-2.0",
    "HuggingFaceTB/SmolLM-": "apache-2.0",
    "mistralai/Mistral-7B-": "apache-2.0",
    "TinyLlama/TinyLlama-": "apache-2.0",
    "meta-llama/Llama-3.1-": "llama3.1",
    "meta-llama/Llama-3.2-": "llama3.2",
}
# The bundled base model (SmolLM2-135M-Instruct) is Apache-2.0, whatever it is called here.
_BUNDLED_LICENSES = {"bundled:smollm2": "apache-2.0"}

_METHOD_TAGS = {"supervised": "sft", "dpo": "dpo"}
_METHOD_NAMES = {"supervised": "supervised fine-tuning (SFT)", "dpo": "direct preference optimization (DPO)"}


def base_model_license(base_id: str, source: str | None) -> str | None:
    """The base model's license where known: the bundled model's, or by the
    Hugging Face repo it comes from (its `hf:` source, else its public id)."""
    if source in _BUNDLED_LICENSES:
        return _BUNDLED_LICENSES[source]
    repo = source.removeprefix("hf:").partition("@")[0] if source and source.startswith("hf:") else base_id
    for prefix, license_id in KNOWN_LICENSES.items():
        if repo.startswith(prefix):
            return license_id
    return None


# ------------------------------------------------------------------ the files


def model_card_files(session: Session, settings: Settings, job: FineTuningJob) -> dict[str, bytes]:
    """README.md and training_curves.png of a succeeded job, for a download to carry."""
    rows = _metrics_rows(session, job)
    return {
        CARD_NAME: model_card(session, settings, job, rows).encode(),
        CURVES_NAME: training_curves_png(rows),
    }


def write_zip_with_card(storage: Storage, key: str, card_files: dict[str, bytes], out: IO[bytes]) -> None:
    """The stored zip `key` written to `out` with the card's files in it,
    replacing those of the same names (the short README packed at training)."""
    with tempfile.TemporaryFile() as source:
        local = storage.local_path(key)
        if local is not None:
            with open(local, "rb") as stored:
                shutil.copyfileobj(stored, source)
        else:
            for chunk in storage.iter_bytes(key):
                source.write(chunk)
        source.seek(0)
        with zipfile.ZipFile(source) as old, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as new:
            for info in old.infolist():
                if info.filename not in card_files:
                    with old.open(info) as member, new.open(info, "w", force_zip64=info.file_size > 2**31) as copy:
                        shutil.copyfileobj(member, copy)
            for name in sorted(card_files):
                new.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), card_files[name], zipfile.ZIP_DEFLATED)


def _metrics_rows(session: Session, job: FineTuningJob) -> list[dict]:
    return metrics_by_step(JobRepository(session, job.owner_id).metrics_events(job.id))


# ----------------------------------------------------------------- the README


def model_card(session: Session, settings: Settings, job: FineTuningJob, rows: list[dict] | None = None) -> str:
    """The README.md of a succeeded job (its recipe is written by then)."""
    recipe = job.recipe or {}
    if rows is None:
        rows = _metrics_rows(session, job)
    evaluation = EvaluationRepository(session, job.owner_id).get(job.evaluation_id) if job.evaluation_id else None
    full = is_full_fine_tune(job)
    sections = [
        _front_matter(settings, job, full),
        _title(job, recipe, full),
        _method_section(job, recipe, full),
        _hyperparameters_section(job, recipe),
        _data_section(recipe),
        _curves_section(rows),
        _evaluation_section(job, evaluation, full),
        _lineage_section(job, recipe),
        _environment_section(recipe),
        _usage_section(job, recipe, full),
    ]
    return "\n".join(section.rstrip("\n") + "\n" for section in sections)


def _front_matter(settings: Settings, job: FineTuningJob, full: bool) -> str:
    adapter = ((job.hyperparameters or {}).get("adapter") or {}).get("value") or "lora"
    meta: dict[str, Any] = {
        "base_model": job.model,
        "library_name": "transformers" if full else "peft",
    }
    license_id = base_model_license(job.model, settings.base_models.get(job.model))
    if license_id:
        meta["license"] = license_id
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["tunehouse", adapter, _METHOD_TAGS.get(job.method, job.method)]
    if not full:
        meta["tags"].append(f"base_model:adapter:{job.model}")
    meta["model_name"] = job.fine_tuned_model or job.id
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _title(job: FineTuningJob, recipe: dict, full: bool) -> str:
    base = recipe.get("base_model") or {}
    what = "A full fine-tune" if full else "A LoRA adapter"
    revision = f" (revision `{base['revision']}`)" if base.get("revision") else ""
    return (
        f"# {job.fine_tuned_model or job.id}\n\n"
        f"{what} of `{job.model}`{revision}, trained by tunehouse job `{job.id}` with "
        f"{_METHOD_NAMES.get(job.method, job.method)}.\n"
    )


def _method_section(job: FineTuningJob, recipe: dict, full: bool) -> str:
    method = recipe.get("method") or {}
    result = recipe.get("result") or {}
    rows = [("training method", _METHOD_NAMES.get(job.method, job.method))]
    for name in ("adapter", "device", "dtype", "compute_dtype", "quantization", "attention", "gradient_checkpointing", "optimizer"):
        if name in method and method[name] is not None:
            rows.append((name.replace("_", " "), _show(method[name])))
    reason = (method.get("compute") or {}).get("reason")
    if reason:
        rows.append(("why this compute dtype", str(reason)))
    for name in ("steps", "trained_tokens", "train_loss", "valid_loss", "truncated_examples"):
        if result.get(name) is not None:
            rows.append((name.replace("_", " "), _show(result[name])))
    what = (
        "Every weight of the base model was trained: the download is the whole model."
        if full else "Only the LoRA matrices were trained; the base model's weights are unchanged."
    )
    return "## Method\n\n" + what + "\n\n" + _table(("", "value"), rows)


def _hyperparameters_section(job: FineTuningJob, recipe: dict) -> str:
    resolved = recipe.get("hyperparameters") or job.hyperparameters or {}
    rows = []
    for name, detail in resolved.items():
        if not isinstance(detail, dict):  # a bare value (a recipe written by hand, an imported one)
            detail = {"value": detail}
        rows.append((name, _show(detail.get("value")), str(detail.get("origin") or ""), str(detail.get("reason") or "")))
    seed = recipe.get("seed") or {"value": job.seed, "origin": job.seed_origin}
    rows.append(("seed", _show(seed.get("value")), str(seed.get("origin") or ""), "the seed of the data order and the adapter's initialisation"))
    return (
        "## Hyperparameters\n\n"
        "Every value that reached the trainer, with where it came from: `user` (asked for), "
        "`auto` (chosen from the data and the model, for the reason given), `default`, or `parent` "
        "(the adapter this job trained on).\n\n"
        + _table(("name", "value", "origin", "reason"), rows)
    )


def _data_section(recipe: dict) -> str:
    data = recipe.get("data") or {}
    files = [(role, data.get(f"{role}_file")) for role in ("training", "validation")]
    file_rows = [
        (role, str(f.get("filename")), f"`{f.get('id')}`", f"`{f.get('sha256')}`", _show(f.get("bytes")))
        for role, f in files if f
    ]
    counts = [
        (label, _show(data[name]))
        for name, label in (
            ("format", "format"), ("train_examples", "training examples"), ("train_tokens", "training tokens"),
            ("eval_examples", "held-out examples"), ("eval_tokens", "held-out tokens"),
            ("token_length_p99", "example length, 99th percentile (tokens)"),
            ("token_length_max", "example length, longest (tokens)"),
        )
        if data.get(name) is not None
    ]
    split = data.get("split") or {}
    if data.get("validation_file"):
        how = "The held-out examples are the whole validation file; every example of the training file was trained on."
    else:
        how = (
            f"Split: {split.get('method', 'unknown')}; test fraction {_show(split.get('test_fraction'))}, "
            f"seed {_show(split.get('seed'))}. Lines with `\"split\": \"TEST\"` (or drawn for the test split) "
            "were held out, never trained on."
        )
    source = f" Held-out data: {data['eval_source']}." if data.get("eval_source") else ""
    return (
        "## Data\n\n"
        + (_table(("file", "name", "id", "sha256", "bytes"), file_rows) + "\n" if file_rows else "")
        + (_table(("", "count"), counts) + "\n" if counts else "")
        + how + source + "\n"
    )


def _curves_section(rows: list[dict]) -> str:
    if not rows:
        return "## Training curves\n\nNo training step was recorded.\n"
    last = rows[-1]
    valid = [row for row in rows if row.get("valid_loss") is not None]
    summary = f"{len(rows)} steps recorded; the last step's training loss {_show(last.get('train_loss'))}"
    if valid:
        summary += f", the last validation loss {_show(valid[-1]['valid_loss'])} (step {valid[-1]['step']})"
    return f"## Training curves\n\n![Loss and learning rate by step]({CURVES_NAME})\n\n{summary}.\n"


def _evaluation_section(job: FineTuningJob, evaluation: Evaluation | None, full: bool) -> str:
    head = "## Evaluation\n\n"
    if evaluation is None:
        why = (
            "a full fine-tune is not served by tunehouse" if full
            else "no held-out examples to evaluate on, or the base model was not offered any more"
        )
        return head + f"No automatic evaluation ({why}).\n"
    where = f"on the {evaluation.split} split of `{evaluation.file_id}`"
    if evaluation.status != "succeeded":
        return head + f"The automatic evaluation `{evaluation.id}` ({where}) is {evaluation.status}; its metrics appear here once it has finished.\n"
    models = list(evaluation.models)
    results = evaluation.results or {}
    metrics = sorted({metric for model in models for metric in (results.get(model) or {})})
    labels = ["base model" if model == job.model else "this fine-tune" if model == job.fine_tuned_model else model for model in models]
    rows = [(metric, *(_show((results.get(model) or {}).get(metric)) for model in models)) for metric in metrics]
    items = f"{evaluation.items_total} examples" if evaluation.items_total is not None else "the held-out examples"
    return (
        head
        + f"The automatic evaluation `{evaluation.id}`: the base model and this fine-tune, greedy answers to {items} {where}.\n\n"
        + _table(("metric", *labels), rows)
    )


def _lineage_section(job: FineTuningJob, recipe: dict) -> str:
    base = recipe.get("base_model") or {}
    if not job.parent_model:
        return f"## Lineage\n\nTrained from the base model `{job.model}` (source `{base.get('source')}`, revision `{base.get('revision')}`).\n"
    parent = recipe.get("parent") or {}
    step = f", checkpoint at step {parent['checkpoint_step']}" if parent.get("checkpoint_step") is not None else ""
    chain = recipe.get("lineage") or [job.parent_model, job.model]
    return (
        "## Lineage\n\n"
        f"Trained further from `{job.parent_model}` (job `{job.parent_job_id}`{step}), whose adapter it continues.\n\n"
        "From the parent down to the base model:\n\n" + "".join(f"1. `{model}`\n" for model in chain)
    )


def _environment_section(recipe: dict) -> str:
    environment = recipe.get("environment") or {}
    if not environment:
        return "## Libraries and hardware\n\nNot recorded.\n"
    return "## Libraries and hardware\n\n" + _table(("", ""), [(name, _show(value)) for name, value in environment.items()])


def _usage_section(job: FineTuningJob, recipe: dict, full: bool) -> str:
    base = job.model
    api = f"/v1/fine_tuning/jobs/{job.id}"
    if full:
        load = f"""The merged download (`GET {api}/merged`) is the whole model:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("path/to/the/model/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/the/model/folder")
```
"""
    else:
        load = f"""With PEFT, the adapter download (`GET {api}/adapter`) on its base model:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "path/to/the/adapter/folder")
tokenizer = AutoTokenizer.from_pretrained("{base}")
```

With transformers alone, the merged weights (`GET {api}/merged`):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("path/to/the/merged/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/the/merged/folder")
```
"""
    rerun = recipe.get("rerun")
    return (
        "## How to use it\n\n"
        + load
        + f"""
With llama.cpp or Ollama, the GGUF download (`GET {api}/gguf?quantization=q8_0`; also `f16`, `q4_k_m`),
which carries the chat template and a `Modelfile`:

```sh
llama-cli -m model.gguf -cnv
ollama create my-fine-tune -f Modelfile && ollama run my-fine-tune
```
"""
        + (f"\nTo train it again without the service: `{rerun}` (the recipe is `tunehouse_recipe.yaml`).\n" if rerun else "")
    )


# -------------------------------------------------------------- formatting


def _show(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_show(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.items())
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(str(cell)) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the curves


def training_curves_png(rows: list[dict]) -> bytes:
    """Loss (training and validation) and learning rate by step, one PNG."""
    # The object API, not pyplot: no global figure state in a threaded server.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 6), dpi=100, layout="constrained")
    loss, rate = figure.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    train = [(row["step"], row["train_loss"]) for row in rows if row.get("train_loss") is not None]
    valid = [(row["step"], row["valid_loss"]) for row in rows if row.get("valid_loss") is not None]
    lr = [(row["step"], row["learning_rate"]) for row in rows if row.get("learning_rate") is not None]
    if train:
        loss.plot(*zip(*train), label="training loss", color="#1f77b4", linewidth=1.2)
    if valid:
        loss.plot(*zip(*valid), label="validation loss", color="#d62728", marker="o", markersize=3, linewidth=1.2)
    if train or valid:
        loss.legend(loc="upper right")
    else:
        loss.text(0.5, 0.5, "no loss recorded", ha="center", va="center", transform=loss.transAxes)
    loss.set_ylabel("loss")
    loss.grid(alpha=0.3)
    if lr:
        rate.plot(*zip(*lr), color="#2ca02c", linewidth=1.2)
    rate.set_ylabel("learning rate")
    rate.set_xlabel("step")
    rate.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    rate.grid(alpha=0.3)
    out = io.BytesIO()
    # No "Software" text chunk: the bytes depend on the data, not on the matplotlib version string.
    figure.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()
