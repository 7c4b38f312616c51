"""`tunehouse train`: a job's training re-run from its recipe, without the
service: the same split, resolved hyperparameters, seed and training code."""

import hashlib
import shutil
from pathlib import Path

import yaml

from domain.jobs.hyperparameters import plain_values
from domain.jobs.training_metrics import metrics_csv
from domain.settings import Settings, get_settings
from worker.training.artifacts import RECIPE_VERSION, recipe_yaml
from worker.training.data import load_split_data
from worker.training.environment import pick_device

def _file_chunks(path: Path):
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            yield chunk


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _file_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def train_from_recipe(
    recipe_path: Path,
    data_path: Path,
    out_dir: Path,
    *,
    validation_path: Path | None = None,
    device: str = "auto",
    settings: Settings | None = None,
    echo=print,
    parent_adapter: Path | None = None,
) -> Path:
    """Re-run a job's training from its recipe, without the service: same
    split, same resolved hyperparameters, same seed, same recipe code.
    Writes out_dir/adapter, out_dir/metrics.csv and out_dir/recipe.yaml.
    A job that continued a fine-tune needs that fine-tune's adapter folder
    (`parent_adapter`): its download, or the adapter/ of a re-run of the
    parent's recipe (recipe["parent"]["recipe"]), and so on down the chain."""
    from worker.models.catalog import resolve_base_model
    from worker.training.recipe import TrainingConfig, TrainingHooks, train

    settings = settings or get_settings()
    recipe = yaml.safe_load(recipe_path.read_text())
    if not isinstance(recipe, dict) or recipe.get("tunehouse_recipe_version") != RECIPE_VERSION:
        raise ValueError(f"{recipe_path} is not a tunehouse recipe (version {RECIPE_VERSION})")
    expected = (recipe["data"].get("training_file") or {}).get("sha256")
    if expected and _sha256_of(data_path) != expected:
        echo(f"warning: {data_path} differs from the job's training file (sha256 {expected[:12]}…)")
    base_entry = recipe["base_model"]
    base = resolve_base_model(base_entry["id"], base_entry["source"], settings.work_dir)
    if base.revision != base_entry["revision"]:
        echo(f"warning: base model revision {base.revision} differs from the recipe's {base_entry['revision']}")
    data = load_split_data(
        _file_chunks(data_path),
        recipe["data"]["split"]["seed"],
        _file_chunks(validation_path) if validation_path else None,
    )
    echo(f"{len(data.train)} training and {len(data.eval)} evaluation examples ({data.eval_source})")
    parent = recipe.get("parent")
    if parent and parent_adapter is None:
        raise ValueError(
            f"this recipe continues {parent['model']}: give --parent-adapter, that model's adapter folder "
            "(its /adapter download unzipped, or the adapter/ of `tunehouse train` on the parent's recipe, "
            "which is recipe['parent']['recipe'])"
        )
    if parent_adapter is not None:
        if not (parent_adapter / "adapter_config.json").is_file():
            raise ValueError(f"{parent_adapter} is not a PEFT adapter folder (no adapter_config.json)")
        if not parent:
            echo("warning: the recipe starts from its base model; training the given --parent-adapter on instead")
        echo(f"continuing the adapter in {parent_adapter}")
    config = TrainingConfig(
        base_model_dir=base.local_dir,
        hyperparameters=plain_values(recipe["hyperparameters"]),
        seed=recipe["seed"]["value"],
        device=pick_device(device),
        method=recipe.get("training_method", "supervised"),
        init_adapter_dir=parent_adapter,
    )
    rows: list[dict] = []

    def on_metrics(metrics: dict) -> None:
        rows.append(metrics)
        echo(f"step {metrics['step']}/{metrics['total_steps']} train_loss {metrics['train_loss']:.4f}")

    out_dir.mkdir(parents=True, exist_ok=True)
    hooks = TrainingHooks(on_message=lambda message, _data=None: echo(message), on_metrics=on_metrics)
    result = train(config, data.train, data.eval, out_dir / "work", hooks)
    adapter_dir = out_dir / "adapter"
    shutil.rmtree(adapter_dir, ignore_errors=True)
    shutil.move(str(result.adapter_dir), adapter_dir)
    shutil.rmtree(out_dir / "work", ignore_errors=True)
    (out_dir / "metrics.csv").write_text(metrics_csv(rows))
    (out_dir / "recipe.yaml").write_text(recipe_yaml(recipe))
    echo(f"adapter written to {adapter_dir}")
    return adapter_dir

