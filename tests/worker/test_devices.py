"""A worker reports its device and the shapes of the base models it has on
disk when it starts (worker/devices.py), into the database the API reads."""

import os

import pytest

from domain.db import make_engine, make_sessionmaker, migrate
from domain.jobs.memory import model_shape_from_folder
from domain.settings import Settings
from domain.workers.repository import model_shape, training_devices
from worker.devices import cpu_memory, describe_device, forget_worker, report_worker


def test_a_cpu_worker_describes_its_memory_and_cores():
    device = describe_device("cpu")
    assert device["device"] == "cpu" and device["device_count"] == 1
    assert device["total_memory_bytes"] == cpu_memory()[0] > 0
    assert device["cpu_cores"] == os.cpu_count()


def test_report_worker_writes_its_row_and_the_shapes_it_can_read(tmp_path, tiny_model_dir):
    settings = Settings(
        data_dir=tmp_path, worker_device="cpu",
        base_models={"tiny": f"path:{tiny_model_dir}", "remote": "hf:nobody/not-in-the-cache"},
    )
    migrate(settings.database_url)
    device = report_worker(settings, "tunehouse-1@test", "default,train")
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            [row] = training_devices(session)
            assert row["worker"] == "tunehouse-1@test" and row["device"] == "cpu"
            assert row["total_memory_bytes"] == device["total_memory_bytes"] > 0
            assert model_shape(session, "tiny", f"path:{tiny_model_dir}") == model_shape_from_folder(tiny_model_dir)
            assert model_shape(session, "remote", "hf:nobody/not-in-the-cache") is None  # nothing downloaded
        forget_worker(settings, "tunehouse-1@test")
        with make_sessionmaker(engine)() as session:
            assert training_devices(session) == []
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_started_worker_reports_its_device_and_removes_it_when_it_stops(tmp_path):
    """The real `tunehouse worker` (Celery's worker_ready and worker_shutdown)."""
    import signal
    import subprocess
    import sys

    from tests.conftest import wait_for

    settings = Settings(data_dir=tmp_path, worker_device="cpu")
    migrate(settings.database_url)
    env = {**os.environ, "TUNEHOUSE_DATA_DIR": str(tmp_path), "TUNEHOUSE_WORKER_DEVICE": "cpu"}
    worker = subprocess.Popen([sys.executable, "-m", "api.cli", "worker", "--queues", "train"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)

    def devices():
        with sessions() as session:
            return training_devices(session)

    def smollm2_shape():
        with sessions() as session:
            return model_shape(session, "HuggingFaceTB/SmolLM2-135M-Instruct", "bundled:smollm2")

    try:
        # The shapes first, then the device row: a device means both are there.
        [row] = wait_for(devices, 120, "the worker to report its device and SmolLM2's numbers")
        assert smollm2_shape().num_layers == 30  # from the bundled GGUF's header: nothing was converted
        assert not (tmp_path / "work" / "base-models").exists()
        assert row["worker"].startswith("tunehouse-") and row["queues"] == ["train"]
        assert row["device"] == "cpu" and row["total_memory_bytes"] == cpu_memory()[0]
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        assert devices() == []
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        engine.dispose()


def test_an_inference_worker_reports_its_device_but_sizes_no_model(tmp_path, tiny_model_dir):
    settings = Settings(data_dir=tmp_path, worker_device="cpu", base_models={"tiny": f"path:{tiny_model_dir}"})
    migrate(settings.database_url)
    report_worker(settings, "chat@test", "inference")
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            assert training_devices(session) == []  # not a training worker
            assert model_shape(session, "tiny", f"path:{tiny_model_dir}") is None
    finally:
        engine.dispose()


def test_the_gguf_header_reads_as_the_gguf_package_reads_it(tmp_path):
    """gguf_header (the header alone, arrays as their length) against the gguf
    package's full reader, on the bundled SmolLM2 file: every field, every
    tensor's element count."""
    import gguf

    from worker.devices import gguf_header
    from worker.models.gguf import bundled_gguf_path

    path = bundled_gguf_path()
    fields, tensors = gguf_header(path)
    reader = gguf.GGUFReader(path)
    expected = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert fields.keys() == expected.keys()
    for name, value in expected.items():
        if isinstance(value, list):
            assert fields[name] == len(value), name
        else:
            assert fields[name] == pytest.approx(value), name
    assert tensors == {tensor.name: int(tensor.n_elements) for tensor in reader.tensors}
    assert fields["tokenizer.ggml.tokens"] == 49152 and "output.weight" not in tensors

    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_header(not_gguf)
