"""The memory estimate and fit check (domain/jobs/memory.py): its parts move
the way training memory does, and the fit check judges the right device."""

import json
import struct

import pytest

from domain.jobs.memory import (
    CPU_PROCESS_BYTES,
    CUDA_CONTEXT_BYTES,
    GIB,
    ModelShape,
    ModelShapeError,
    TrainingSetup,
    estimate_training_memory,
    fit_check,
    lora_parameters,
    model_shape_from_config,
    model_shape_from_folder,
    safetensors_parameter_count,
)

# SmolLM2-135M-Instruct's config.json (the numbers that matter).
SMOLLM2_CONFIG = {
    "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True,
}
SMOLLM2_PARAMETERS = 134_515_008  # counted from its weights


def smollm2() -> ModelShape:
    return model_shape_from_config(SMOLLM2_CONFIG)


def setup(**changes) -> TrainingSetup:
    values = dict(adapter="lora", device="cpu", micro_batch_size=4, row_tokens=256, compute_dtype="float32")
    values.update(changes)
    return TrainingSetup(**values)


def test_the_parameter_count_from_the_config_is_the_models():
    shape = smollm2()
    assert shape.parameters == SMOLLM2_PARAMETERS
    assert (shape.head_dim, shape.kv_width, shape.q_width) == (64, 192, 576)


def test_an_untied_model_counts_its_output_layer():
    tied, untied = smollm2(), model_shape_from_config({**SMOLLM2_CONFIG, "tie_word_embeddings": False})
    assert untied.parameters - tied.parameters == 49152 * 576


def test_a_config_nested_in_text_config_is_read_and_a_useless_one_refused():
    assert model_shape_from_config({"text_config": SMOLLM2_CONFIG}).parameters == SMOLLM2_PARAMETERS
    with pytest.raises(ModelShapeError):
        model_shape_from_config({"model_type": "llama", "hidden_size": 576})


def test_lora_parameters_are_peft_s_count_for_smollm2():
    # PEFT's print_trainable_parameters for r=16 on all linear layers of SmolLM2-135M.
    assert lora_parameters(smollm2(), 16, "all-linear") == 4_884_480
    assert lora_parameters(smollm2(), 16, ["q_proj", "v_proj"]) == 30 * 16 * (576 + 576 + 576 + 192)


def test_safetensors_headers_give_the_exact_count_and_the_folder_its_shape(tmp_path):
    header = {"__metadata__": {"format": "pt"},
              "a": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]},
              "b": {"dtype": "F32", "shape": [5], "data_offsets": [48, 68]}}
    raw = json.dumps(header).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(68))
    assert safetensors_parameter_count([tmp_path / "model.safetensors"]) == 17
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    assert model_shape_from_folder(tmp_path).parameters == 17  # the weights win over the config's count


def test_each_part_grows_with_what_drives_it():
    shape = smollm2()
    small = estimate_training_memory(shape, setup())
    longer = estimate_training_memory(shape, setup(row_tokens=512))
    wider = estimate_training_memory(shape, setup(micro_batch_size=8))
    assert longer["parts"]["activations"] == 2 * small["parts"]["activations"]
    assert wider["parts"]["logits"] == 2 * small["parts"]["logits"]
    assert small["parts"]["weights"] == longer["parts"]["weights"] == 4 * SMOLLM2_PARAMETERS
    assert small["parts"]["runtime"] == CPU_PROCESS_BYTES
    parts = small["parts"]
    assert small["peak_bytes"] == (parts["runtime"] + parts["weights"] + parts["trainable_weights"] + parts["optimizer"]
                                   + max(parts["activations"] + parts["logits"], parts["gradients"]))
    fewer_trained = estimate_training_memory(shape, setup(trained_fraction=0.5))
    assert fewer_trained["parts"]["logits"] == small["parts"]["logits"] // 2


def test_full_fine_tuning_holds_gradients_and_adamw_for_every_weight():
    shape = smollm2()
    lora = estimate_training_memory(shape, setup())
    full = estimate_training_memory(shape, setup(adapter="full"))
    assert full["parts"]["gradients"] == 4 * SMOLLM2_PARAMETERS
    assert full["parts"]["optimizer"] == 8 * SMOLLM2_PARAMETERS
    assert lora["parts"]["optimizer"] == 8 * 4_884_480
    assert full["peak_bytes"] > lora["peak_bytes"] + 7 * SMOLLM2_PARAMETERS  # AdamW for every weight
    cuda_full = estimate_training_memory(shape, setup(adapter="full", device="cuda", compute_dtype="bfloat16"))
    assert cuda_full["parts"]["optimizer"] == 2 * SMOLLM2_PARAMETERS  # 8-bit AdamW
    assert cuda_full["parts"]["weights"] == cuda_full["parts"]["gradients"] == 2 * SMOLLM2_PARAMETERS


def test_qlora_stores_the_linear_layers_in_4_bits_and_the_rest_in_fp32():
    shape = model_shape_from_config({**SMOLLM2_CONFIG, "hidden_size": 4096, "intermediate_size": 14336,
                                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                                     "num_hidden_layers": 32, "tie_word_embeddings": False})
    assert 7.9e9 < shape.parameters < 8.1e9  # Llama-3-8B's shape
    cuda = dict(device="cuda", compute_dtype="bfloat16")
    qlora = estimate_training_memory(shape, setup(adapter="qlora", **cuda))
    lora = estimate_training_memory(shape, setup(adapter="lora", **cuda))
    assert lora["parts"]["weights"] == 2 * shape.parameters
    other = shape.parameters - shape.linear_parameters  # embeddings, head, norms: fp32 after PEFT's k-bit preparation
    assert qlora["parts"]["weights"] == int(shape.linear_parameters * 4.127 / 8) + 4 * other
    assert 3 * GIB < qlora["parts"]["weights"] - 4 * other < 4 * GIB  # ~7 billion weights in 4 bits


def test_gradient_checkpointing_keeps_one_input_per_layer():
    shape = smollm2()
    cuda = dict(device="cuda", compute_dtype="bfloat16")
    kept = estimate_training_memory(shape, setup(gradient_checkpointing=False, **cuda))
    recomputed = estimate_training_memory(shape, setup(**cuda))  # the CUDA default
    assert recomputed["gradient_checkpointing"] and not kept["gradient_checkpointing"]
    assert recomputed["parts"]["activations"] < kept["parts"]["activations"] / 5


def test_dpo_runs_two_rows_a_pair():
    shape = smollm2()
    sft = estimate_training_memory(shape, setup(micro_batch_size=2))
    dpo = estimate_training_memory(shape, setup(micro_batch_size=2, method="dpo"))
    assert dpo["parts"]["activations"] == 2 * sft["parts"]["activations"]
    assert any("dpo" in line for line in dpo["assumptions"])


def test_setup_from_resolved_hyperparameters():
    values = {"batch_size": 8, "gradient_accumulation_steps": 4, "max_seq_length": 1024, "adapter": "qlora",
              "lora_r": 8, "compute_dtype": "bfloat16", "target_modules": "all-linear"}
    found = TrainingSetup.from_hyperparameters(values, "cuda", row_tokens=300)
    assert (found.micro_batch_size, found.row_tokens, found.adapter, found.lora_r) == (2, 300, "qlora", 8)
    assert TrainingSetup.from_hyperparameters(values, "cuda", row_tokens=5000).row_tokens == 1024


def test_an_unknown_adapter_is_refused():
    with pytest.raises(ValueError, match="adapter"):
        estimate_training_memory(smollm2(), setup(adapter="prefix"))


def gpu(name: str, gib: float, worker: str = "w1") -> dict:
    return {"worker": worker, "device": "cuda", "name": name, "total_memory_bytes": int(gib * GIB)}


def test_the_fit_check_judges_the_largest_device_of_the_estimate_s_kind():
    estimate = {"peak_bytes": 10 * GIB, "device": "cuda"}
    devices = [gpu("L4", 24, "a"), gpu("A10G", 8, "b"), {"worker": "c", "device": "cpu", "total_memory_bytes": 512 * GIB}]
    fit = fit_check(estimate, devices)
    assert fit["fits"] is True and fit["device"]["worker"] == "a"
    assert fit_check({"peak_bytes": 30 * GIB, "device": "cuda"}, devices)["fits"] is False
    # The CUDA context counts on a GPU: 24 GiB minus a little does not fit a 24 GiB card.
    assert fit_check({"peak_bytes": 24 * GIB - CUDA_CONTEXT_BYTES // 2, "device": "cuda"}, devices)["fits"] is False
    assert fit_check({"peak_bytes": 24 * GIB - CUDA_CONTEXT_BYTES, "device": "cuda"}, devices)["fits"] is True
    refused = fit_check({"peak_bytes": 30 * GIB, "device": "cuda"}, devices)
    assert "L4" in refused["reason"] and "batch_size" in refused["reason"]


def test_the_fit_check_says_unknown_without_a_device_of_that_kind_or_an_estimate():
    assert fit_check({"peak_bytes": GIB, "device": "cuda"}, [])["fits"] == "unknown"
    only_cpu = fit_check({"peak_bytes": GIB, "device": "cuda"}, [{"worker": "c", "device": "cpu", "total_memory_bytes": GIB}])
    assert only_cpu["fits"] == "unknown" and "cpu" in only_cpu["reason"]
    assert fit_check(None, [gpu("L4", 24)])["fits"] == "unknown"


def test_gradients_and_activations_do_not_count_together():
    shape = smollm2()
    short = estimate_training_memory(shape, setup(adapter="full", row_tokens=16, micro_batch_size=1))
    parts = short["parts"]
    assert parts["gradients"] > parts["activations"] + parts["logits"]  # a short row: the gradients are larger
    without_gradients = sum(parts.values()) - parts["activations"] - parts["logits"]
    assert short["peak_bytes"] == without_gradients
