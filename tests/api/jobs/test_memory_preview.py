"""The preview's memory section over HTTP: the estimate for the request and
whether it fits the devices the training workers reported."""

from contextlib import contextmanager

from domain.jobs.memory import GIB, model_shape_from_config
from domain.workers.models import BaseModelShape, WorkerDevice
from domain.workers.repository import record_model_shape, report_device
from tests.api.jobs.test_endpoints import BASE, training_file
from tests.domain.jobs.test_memory import SMOLLM2_CONFIG


@contextmanager
def reported(service, *devices: tuple[str, str, dict], shape: bool = True):
    """Workers' rows (and SmolLM2's shape) for the duration of a test."""
    with service.state.sessionmaker() as session:
        for worker, queues, device in devices:
            report_device(session, worker, queues, device)
        if shape:
            record_model_shape(session, BASE, service.settings.base_models[BASE], None,
                               model_shape_from_config(SMOLLM2_CONFIG))
        session.commit()
    try:
        yield
    finally:
        with service.state.sessionmaker() as session:
            session.query(WorkerDevice).delete()
            session.query(BaseModelShape).delete()
            session.commit()


def preview(client, **extra) -> dict:
    body = {"model": BASE, "training_file": training_file(client),
            "hyperparameters": {"batch_size": 4, "extra": {"max_seq_length": 256, **extra}}}
    response = client.post("/v1/fine_tuning/jobs/preview", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def cpu(gib: float) -> dict:
    return {"device": "cpu", "name": "Test CPU", "total_memory_bytes": int(gib * GIB), "memory_source": "test"}


def test_the_preview_estimates_and_fits_the_reported_training_worker(service, alice):
    with reported(service, ("trainer@a", "train", cpu(64)), ("chat@a", "inference", cpu(1))):
        answer = preview(alice)
        assert answer["device"] == "cpu"  # what the training worker reported
        memory = answer["memory"]
        assert memory["fits"] is True and memory["device"]["worker"] == "trainer@a"
        assert [d["worker"] for d in memory["devices"]] == ["trainer@a"]  # the inference worker does not train
        estimate = memory["estimate"]
        assert estimate["adapter"] == "lora" and estimate["device"] == "cpu"
        parts = estimate["parts"]
        assert parts["activations"] > 0 and parts["weights"] > 0
        assert estimate["peak_bytes"] <= sum(parts.values())
        # Examples are short (the report's longest), so rows are shorter than max_seq_length.
        assert estimate["peak_bytes"] < 4 * GIB
        assert memory["model_shape"]["num_layers"] == 30


def test_a_device_too_small_is_named_in_the_answer(service, alice):
    with reported(service, ("trainer@small", "default,train", cpu(0.5))):
        memory = preview(alice)["memory"]
        assert memory["fits"] is False
        assert "trainer@small" in memory["reason"] and "batch_size" in memory["reason"]


def test_without_reports_the_fit_is_unknown(service, alice):
    with reported(service, shape=False):
        memory = preview(alice)["memory"]
        assert memory["fits"] == "unknown" and memory["devices"] == []
        assert memory["reason"]
