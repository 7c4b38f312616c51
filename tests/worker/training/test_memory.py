"""Memory measured per step (worker/training/memory.py) on the tiny Llama, and
the model numbers the estimate reads (domain/jobs/memory.py) checked against
the real model and PEFT."""

import pytest
import torch

from domain.jobs.memory import lora_parameters, model_shape_from_config, model_shape_from_folder
from tests.domain.jobs.test_memory import SMOLLM2_CONFIG
from tests.worker.training.test_recipe import run_training
from worker.devices import bundled_gguf_shape, cpu_memory
from worker.models.gguf import bundled_gguf_path
from worker.training.memory import MemoryMeter, estimate_run_memory, process_peak_rss_bytes


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


def test_every_step_records_the_process_peak_and_the_run_keeps_the_largest(tiny_model_dir, tmp_path):
    run = run_training(tiny_model_dir, tmp_path, n_epochs=1)
    peaks = [m["peak_memory_bytes"] for m in run.metrics]
    assert all(isinstance(peak, int) and peak > 10 * 2**20 for peak in peaks)  # at least the Python process
    assert peaks == sorted(peaks)  # RSS's high-water mark never goes down
    assert peaks[-1] <= process_peak_rss_bytes()
    assert {m["device_memory_bytes"] for m in run.metrics} == {cpu_memory()[0]}
    assert all("peak_reserved_bytes" not in m for m in run.metrics)  # CUDA only
    assert run.result.memory["peak_memory_bytes"] == max(peaks)
    assert run.result.memory["measured_as"] == "peak RSS of the training process"


def test_the_meter_on_cpu_keeps_the_largest_step():
    meter = MemoryMeter("cpu")
    meter.step_started()
    first = meter.step_metrics()["peak_memory_bytes"]
    grown = torch.ones(64 * 2**20 // 4)  # 64 MiB more resident
    grown.add_(1)
    second = meter.step_metrics()["peak_memory_bytes"]
    assert second >= first and meter.run_peak()["peak_memory_bytes"] == second


def test_the_shape_read_from_a_folder_is_the_loaded_model_s(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = model_shape_from_folder(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert shape.parameters == sum(p.numel() for p in model.parameters())  # tied embeddings once
    assert shape.parameters == model_shape_from_config(model.config.to_dict()).parameters
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora_parameters(shape, 8, "all-linear") == trainable


def test_the_bundled_gguf_header_gives_smollm2_s_numbers():
    assert bundled_gguf_shape(bundled_gguf_path()) == model_shape_from_config(SMOLLM2_CONFIG)


def test_the_run_estimate_uses_the_resolved_values_and_the_longest_example(tiny_model_dir):
    values = {"batch_size": 8, "gradient_accumulation_steps": 2, "max_seq_length": 128, "adapter": "lora",
              "lora_r": 8, "compute_dtype": "float32", "target_modules": "all-linear"}
    shape, short = estimate_run_memory(tiny_model_dir, values, "cpu", row_tokens=32)
    _, long = estimate_run_memory(tiny_model_dir, values, "cpu", row_tokens=1000)  # cut at max_seq_length
    assert shape.num_layers == 2
    assert long["parts"]["activations"] == 4 * short["parts"]["activations"]
    assert any("4 rows of 32 tokens" in line for line in short["assumptions"])


def test_cpu_memory_takes_a_cgroup_limit_below_the_ram(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:  1000 kB\n")
    limit = tmp_path / "memory.max"
    limit.write_text("4294967296\n")
    assert cpu_memory([limit], meminfo) == (4294967296, f"cgroup limit ({limit})")
    limit.write_text("max\n")
    assert cpu_memory([limit], meminfo) == (16000000 * 1024, "MemTotal (/proc/meminfo)")
    limit.write_text(str(32 * 2**30))  # a limit above the RAM limits nothing
    assert cpu_memory([limit], meminfo)[0] == 16000000 * 1024
    assert cpu_memory([tmp_path / "absent"], meminfo)[0] == 16000000 * 1024
