"""`tunehouse train`: a job's training re-run from its recipe, without the
service: the same split, resolved hyperparameters, seed and training code;
or from its bundle, checked against its SHA256SUMS and compared with its losses."""

import csv
import hashlib
import io
import math
import shutil
from pathlib import Path

import yaml

from domain.bundles import format as bundle_format
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


def _loss_curve(metrics: str) -> dict[int, tuple[float | None, float | None]]:
    """step -> (train_loss, valid_loss) of a metrics CSV."""
    def number(text: str | None) -> float | None:
        return float(text) if text not in (None, "") else None

    return {int(row["step"]): (number(row.get("train_loss")), number(row.get("valid_loss")))
            for row in csv.DictReader(io.StringIO(metrics))}


def largest_loss_difference(bundled: str, rerun: str) -> float:
    """The largest absolute difference between two metrics CSVs' training and
    validation losses, step by step; infinite when their steps differ."""
    expected, actual = _loss_curve(bundled), _loss_curve(rerun)
    if expected.keys() != actual.keys():
        return math.inf
    largest = 0.0
    for step, losses in expected.items():
        for want, got in zip(losses, actual[step]):
            if (want is None) != (got is None):
                return math.inf
            if want is not None:
                largest = max(largest, abs(want - got))
    return largest


def train_from_bundle(
    bundle_path: Path,
    out_dir: Path,
    *,
    data_path: Path | None = None,
    validation_path: Path | None = None,
    echo=print,
    **options,
) -> float:
    """Re-run the training of a bundle (GET /v1/fine_tuning/jobs/{id}/bundle),
    checked against its SHA256SUMS first, on its own data unless `data_path`
    is given; returns (and prints) the largest difference between the re-run's
    losses and the bundled metrics.csv. `options`: train_from_recipe's
    (device, settings, parent_adapter)."""
    with bundle_path.open("rb") as handle:
        bundle = bundle_format.verify_bundle(handle)
        echo(f"{bundle_path}: every member matches its SHA256SUMS")
        unpacked = out_dir / "bundle"
        unpacked.mkdir(parents=True, exist_ok=True)
        for name in (bundle_format.RECIPE_YAML, bundle_format.METRICS_CSV, bundle_format.TRAINING_DATA,
                     bundle_format.VALIDATION_DATA):
            if bundle.has(name):
                target = unpacked / name  # names checked by verify_bundle: plain relative paths
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as out:
                    for chunk in bundle.chunks(name):
                        out.write(chunk)
    bundled_data = unpacked / bundle_format.TRAINING_DATA
    if data_path is None and not bundled_data.is_file():
        raise ValueError(f"{bundle_path} holds no training data (download it with ?include_data=true): give --data")
    bundled_validation = unpacked / bundle_format.VALIDATION_DATA
    if validation_path is None and bundled_validation.is_file():
        validation_path = bundled_validation
    train_from_recipe(
        unpacked / bundle_format.RECIPE_YAML,
        data_path or bundled_data,
        out_dir,
        validation_path=validation_path,
        echo=echo,
        **options,
    )
    difference = largest_loss_difference(
        (unpacked / bundle_format.METRICS_CSV).read_text(), (out_dir / "metrics.csv").read_text()
    )
    echo(f"largest loss difference from the bundle's metrics.csv: {difference:.6g}")
    return difference
