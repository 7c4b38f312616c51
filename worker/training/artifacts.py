"""What a finished job leaves besides its weights: the recipe (every resolved
hyperparameter with its origin, the data, the seed, the environment: enough
to report the run and re-run it without the service) and the adapter zip
with its README."""

import io
import json
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
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(adapter_dir.rglob("*")):
            # PEFT writes a generic README.md; ours (below) replaces it.
            if path.is_file() and path.name != "README.md":
                archive.write(path, path.relative_to(adapter_dir).as_posix())
        archive.writestr("tunehouse_recipe.json", json.dumps(recipe, indent=2))
        archive.writestr("tunehouse_recipe.yaml", recipe_yaml(recipe))
        archive.writestr("README.md", _adapter_readme(recipe, model_name))
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

