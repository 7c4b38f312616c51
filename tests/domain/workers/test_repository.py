"""What workers report (both backends): one device row per worker name,
replaced when it starts again; the training workers' devices; base model
shapes per catalogue source; the preview's memory section from them."""

from domain.jobs.memory import GIB, model_shape_from_config
from domain.settings import Settings
from domain.workers.models import WorkerDevice
from domain.workers.repository import (
    forget_worker,
    model_shape,
    record_model_shape,
    report_device,
    training_devices,
)
from domain.workers.service import memory_preview, reported_device_kind
from tests.domain.jobs.test_memory import SMOLLM2_CONFIG

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
HP = {"batch_size": 4, "gradient_accumulation_steps": 1, "max_seq_length": 256, "adapter": "lora", "lora_r": 16,
      "compute_dtype": "float32", "target_modules": "all-linear"}


def clear(session) -> None:
    for row in session.query(WorkerDevice).all():
        session.delete(row)
    session.commit()


def cpu(gib: float) -> dict:
    return {"device": "cpu", "name": "Test CPU", "total_memory_bytes": int(gib * GIB), "memory_source": "test",
            "device_count": 1, "cpu_cores": 2}


def test_a_worker_s_row_is_replaced_when_it_reports_again(service):
    with service.state.sessionmaker() as session:
        clear(session)
        report_device(session, "trainer@host", "default,train", cpu(8))
        session.commit()
        first = session.get(WorkerDevice, "trainer@host").reported_at
        report_device(session, "trainer@host", "default,train", cpu(16))
        session.commit()
        devices = training_devices(session)
        assert len(devices) == 1
        assert devices[0]["total_memory_bytes"] == 16 * GIB and devices[0]["queues"] == ["default", "train"]
        assert devices[0]["reported_at"] >= first
        assert session.get(WorkerDevice, "trainer@host").details == {"cpu_cores": 2}


def test_only_training_workers_count_and_a_stopped_worker_is_forgotten(service):
    with service.state.sessionmaker() as session:
        clear(session)
        report_device(session, "inference@host", "inference", {"device": "cuda", "name": "L4", "total_memory_bytes": 24 * GIB})
        session.commit()
        assert training_devices(session) == [] and reported_device_kind(training_devices(session)) is None
        report_device(session, "trainer@host", "train", cpu(8))
        session.commit()
        assert [d["worker"] for d in training_devices(session)] == ["trainer@host"]
        assert reported_device_kind(training_devices(session)) == "cpu"
        forget_worker(session, "trainer@host")
        session.commit()
        assert training_devices(session) == []


def test_a_shape_is_used_only_for_the_source_it_was_recorded_for(service):
    shape = model_shape_from_config(SMOLLM2_CONFIG)
    with service.state.sessionmaker() as session:
        record_model_shape(session, "shape-test-model", "bundled:smollm2", None, shape)
        session.commit()
        assert model_shape(session, "shape-test-model", "bundled:smollm2") == shape
        assert model_shape(session, "shape-test-model", "hf:someone/else") is None


def test_the_memory_preview_fits_the_reported_device_or_says_why_not(service, tmp_path):
    settings = Settings(data_dir=tmp_path, database_url=service.settings.database_url)
    with service.state.sessionmaker() as session:
        clear(session)
        record_model_shape(session, SMOLLM2, "bundled:smollm2", None, model_shape_from_config(SMOLLM2_CONFIG))
        session.commit()
        unknown = memory_preview(session, settings, SMOLLM2, HP, "cpu", training_devices(session))
        assert unknown["fits"] == "unknown" and unknown["estimate"]["peak_bytes"] > 0
        report_device(session, "trainer@host", "train", cpu(64))
        session.commit()
        fits = memory_preview(session, settings, SMOLLM2, HP, "cpu", training_devices(session))
        assert fits["fits"] is True and fits["device"]["worker"] == "trainer@host"
        assert fits["model_shape"]["num_layers"] == 30
        report_device(session, "trainer@host", "train", cpu(1))
        session.commit()
        too_small = memory_preview(session, settings, SMOLLM2, HP, "cpu", training_devices(session))
        assert too_small["fits"] is False and "1.0 GiB" in too_small["reason"]
        clear(session)


def test_without_a_recorded_shape_the_estimate_is_unknown_until_the_model_is_on_disk(service, tmp_path):
    settings = Settings(data_dir=tmp_path, database_url=service.settings.database_url,
                        base_models={"local-model": f"path:{tmp_path / 'model'}"})
    with service.state.sessionmaker() as session:
        missing = memory_preview(session, settings, "local-model", HP, "cpu", training_devices(session))
        assert missing["estimate"] is None and missing["fits"] == "unknown" and "not known" in missing["reason"]
        (tmp_path / "model").mkdir()
        import json

        (tmp_path / "model" / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
        found = memory_preview(session, settings, "local-model", HP, "cpu", training_devices(session))
        assert found["model_shape"]["parameters"] == 134_515_008
