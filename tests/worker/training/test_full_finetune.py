"""Full fine-tuning (adapter "full"): every weight trains, the result is the
whole model, and a resumed run continues exactly (tiny Llama, CPU, fp32)."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.worker.training.test_recipe import run_training
from worker.training.recipe import is_full_model

FULL = dict(adapter="full", learning_rate=1e-3, checkpoint_interval=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory):
    return run_training(tiny_model_dir, tmp_path_factory.mktemp("full"), **FULL)


def weights(directory) -> dict[str, torch.Tensor]:
    found = {}
    for path in sorted(directory.glob("*.safetensors")):
        found.update(load_file(path))
    return found


def test_every_weight_trains_and_the_result_is_a_whole_model(full_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    assert full_run.losses[-1] < full_run.losses[0]
    assert full_run.result.method["adapter"] == "full" and full_run.result.method["target_modules"] == []
    assert full_run.result.method["optimizer"] == "adamw_torch"
    folder = full_run.result.adapter_dir
    assert (folder / "config.json").is_file() and not (folder / "adapter_config.json").exists()
    base, trained = weights(tiny_model_dir), weights(folder)
    assert set(trained) == set(base)
    changed = [name for name in base if not torch.equal(base[name], trained[name])]
    assert len(changed) == len(base)  # norms, embeddings and every linear layer moved
    # It loads anywhere with plain transformers (no tunehouse attention, cache on) and answers.
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert is_full_model(model) and model.config.use_cache
    assert model.config._attn_implementation != "tunehouse_segments"
    output = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert output.shape == (1, 6)


def test_a_full_checkpoint_holds_the_weights_and_resumes_exactly(full_run, tiny_model_dir, tmp_path):
    stopped = run_training(tiny_model_dir, tmp_path / "stopped", stop_after_step=2, **FULL)
    checkpoint = shutil.copytree(stopped.work_dir / "checkpoints" / "step-000002", tmp_path / "downloaded")
    assert (checkpoint / "model.safetensors").is_file()

    resumed = run_training(tiny_model_dir, tmp_path / "work", resume_from=checkpoint, **FULL)

    assert [m["step"] for m in resumed.metrics] == [3, 4, 5, 6]
    torch.testing.assert_close(resumed.losses, full_run.losses[2:], rtol=1e-5, atol=0)
    assert resumed.result.valid_loss == pytest.approx(full_run.result.valid_loss, rel=1e-5)
    expected = weights(full_run.result.adapter_dir)
    for name, tensor in weights(resumed.result.adapter_dir).items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-7)


def test_a_checkpoint_of_another_model_is_refused(full_run, tiny_model_dir, tmp_path):
    checkpoint = shutil.copytree(full_run.work_dir / "checkpoints" / "step-000006", tmp_path / "bad")
    tensors = load_file(checkpoint / "model.safetensors")
    tensors["model.extra.weight"] = torch.zeros(2)
    from safetensors.torch import save_file

    save_file(tensors, checkpoint / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="do not fit"):
        run_training(tiny_model_dir, tmp_path / "work", resume_from=checkpoint, **FULL)
