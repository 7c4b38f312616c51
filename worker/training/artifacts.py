"""What a finished job leaves besides its weights: the recipe (every resolved
hyperparameter with its origin, the data, the seed, the environment: enough
to report the run and re-run it without the service) and the adapter zip
with its README."""

import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import yaml

from domain.files.models import File
from domain.jobs.models import FineTuningJob

RECIPE_VERSION = 1



def build_recipe(
    job: FineTuningJob,
    base,
    hyperparameters: dict,
    data_summary: dict,
    files: dict[str, File | None],
    split_seed: int,
    environment: dict,
    method: dict | None,
) -> dict[str, Any]:
    def file_entry(file: File | None):
        if file is None:
            return None
        return {"id": file.id, "filename": file.filename, "sha256": file.sha256, "bytes": file.bytes}

    return {
        "tunehouse_recipe_version": RECIPE_VERSION,
        "job_id": job.id,
        # OpenAI's method.type: "supervised" (chat, text, prompt/completion) or "dpo" (preference pairs).
        "training_method": job.method,
        "base_model": {"id": base.id, "source": base.source, "revision": base.revision, "max_length": base.max_length},
        "hyperparameters": hyperparameters,
        "seed": {"value": job.seed, "origin": job.seed_origin},
        "data": {
            "training_file": file_entry(files["training"]),
            "validation_file": file_entry(files["validation"]),
            "split": {"method": "explicit 'split' keys, else seeded hash draw", "seed": split_seed, "test_fraction": 0.1},
            **data_summary,
        },
        "method": method,
        "environment": environment,
        "rerun": "tunehouse train --recipe recipe.yaml --data <training file>"
        + (" --validation-data <validation file>" if files["validation"] else "")
        + " --out <dir>",
    }


def recipe_yaml(recipe: dict) -> str:
    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)


def adapter_zip(adapter_dir: Path, recipe: dict, model_name: str) -> bytes:
    return _folder_zip(adapter_dir, recipe, _adapter_readme(recipe, model_name), zipfile.ZIP_DEFLATED)


def _folder_zip(folder: Path, recipe: dict, readme: str, compression: int) -> bytes:
    """A folder's files, the recipe (JSON and YAML) and our README, which
    replaces any README.md in the folder (PEFT writes a generic one)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression, allowZip64=True) as archive:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and path.name != "README.md":
                archive.write(path, path.relative_to(folder).as_posix())
        archive.writestr("tunehouse_recipe.json", json.dumps(recipe, indent=2))
        archive.writestr("tunehouse_recipe.yaml", recipe_yaml(recipe))
        archive.writestr("README.md", readme)
    return buffer.getvalue()


def _adapter_readme(recipe: dict, model_name: str) -> str:
    base = recipe["base_model"]
    return f"""# {model_name}

A LoRA adapter for `{base['id']}` (revision `{base['revision']}`), trained by tunehouse
job `{recipe['job_id']}`.

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base['id']}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("{base['id']}")
```

`tunehouse_recipe.yaml` records every hyperparameter (with where it came from),
the seed, the data's sha256, the library versions and the hardware. To train
it again without the service: `{recipe['rerun']}`.
"""



# ------------------------------------------------------------- full fine-tunes

# What a model folder holds besides its tokenizer (and what tunehouse adds to a converted one).
_NOT_TOKENIZER = ("config.json", "generation_config.json", "tunehouse-source.json", "README.md")


def copy_tokenizer_files(base_model_dir: Path, model_dir: Path) -> None:
    """The base model's tokenizer files, exactly as they are, into a full
    fine-tune's folder, so the folder loads with AutoTokenizer too."""
    for path in sorted(Path(base_model_dir).iterdir()):
        if (path.is_file() and path.name not in _NOT_TOKENIZER and not path.name.endswith(".safetensors")
                and not path.name.endswith(".safetensors.index.json")):
            shutil.copy2(path, Path(model_dir) / path.name)


def full_model_zip(model_dir: Path, recipe: dict, model_name: str) -> bytes:
    """A full fine-tune's download (the job's merged weights): the whole model
    folder as transformers loads it, the recipe and a README. Stored, not
    deflated: safetensors barely compress."""
    return _folder_zip(model_dir, recipe, _full_model_readme(recipe, model_name), zipfile.ZIP_STORED)


def _full_model_readme(recipe: dict, model_name: str) -> str:
    base = recipe["base_model"]
    return f"""# {model_name}

A full fine-tune of `{base['id']}` (revision `{base['revision']}`): every weight
was trained (tunehouse job `{recipe['job_id']}`), so this folder is the whole model.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```

`tunehouse_recipe.yaml` records every hyperparameter (with where it came from),
the seed, the data's sha256, the library versions and the hardware. To train
it again without the service: `{recipe['rerun']}`.
"""
