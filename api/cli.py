"""The `tunehouse` command: serve, worker, train, keys."""

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("tunehouse")


def _settings(data_dir: str | None):
    # --data-dir is the same as TUNEHOUSE_DATA_DIR; the environment is how the
    # worker child process inherits it.
    if data_dir:
        os.environ["TUNEHOUSE_DATA_DIR"] = str(Path(data_dir).expanduser().resolve())
    from api.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def _prepare_database(settings) -> None:
    from api.db import migrate

    migrate(settings.database_url)


def _write_admin_key(settings) -> None:
    from api.auth.service import bootstrap_admin
    from api.db import make_engine, make_sessionmaker

    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        key = bootstrap_admin(session)
        session.commit()
    engine.dispose()
    if key is None:
        return
    key_file = settings.data_dir / "admin-key"
    # Created with 0600 from the start: never readable by others, even briefly.
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    os.chmod(key_file, 0o600)
    print(f"Created user 'admin'. API key (also in {key_file}):\n{key}", flush=True)


def _start_workers(settings) -> list[subprocess.Popen]:
    """Embedded mode: one training worker and one inference worker, so a chat
    request is answered while a job trains."""
    env = {**os.environ, **settings.as_env()}
    return [
        subprocess.Popen([sys.executable, "-m", "api.cli", "worker", "--queues", queues], env=env)
        for queues in ("default,train", "inference")
    ]


def _stop_worker(worker: subprocess.Popen, timeout: float = 30) -> None:
    if worker.poll() is not None:
        return
    worker.send_signal(signal.SIGTERM)  # Celery's warm shutdown: finish or give back the task
    try:
        worker.wait(timeout)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def cmd_serve(args) -> int:
    import uvicorn

    from api.app import create_app

    settings = _settings(args.data_dir)
    _prepare_database(settings)
    _write_admin_key(settings)
    workers = [] if args.no_worker else _start_workers(settings)
    # uvicorn handles SIGINT/SIGTERM itself, then re-raises the signal to the
    # handler that was installed before it: make that one a no-op, so the
    # process lives on to stop its worker and exit 0.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    try:
        config = uvicorn.Config(create_app(settings), host=args.host, port=args.port, log_level="info")
        print(f"tunehouse serving on http://{args.host}:{args.port} (data in {settings.data_dir})", flush=True)
        uvicorn.Server(config).run()  # returns after SIGINT/SIGTERM, once requests drain
    finally:
        for worker in workers:
            _stop_worker(worker)
    return 0


def cmd_worker(args) -> int:
    _settings(args.data_dir)
    from api.queue import ALL_QUEUES, TRAIN_QUEUE
    from worker.celery_app import app

    queues = args.queues or ",".join(ALL_QUEUES)
    if TRAIN_QUEUE not in queues.split(","):
        # Inference workers keep their process between tasks: that is where
        # the loaded base models live (worker/serving.py).
        app.conf.worker_max_tasks_per_child = None
    app.worker_main(
        [
            "worker",
            "--loglevel=INFO",
            f"--queues={queues}",
            f"--concurrency={args.concurrency}",
            "--pool=prefork",
            f"--hostname=tunehouse-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def cmd_keys_create(args) -> int:
    from api.auth.service import create_key, get_or_create_user
    from api.db import make_engine, make_sessionmaker

    settings = _settings(args.data_dir)
    _prepare_database(settings)
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            try:
                user = get_or_create_user(session, args.user)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            key = create_key(session, user)
            session.commit()
    finally:
        engine.dispose()
    print(f"New API key for user '{args.user}':")
    print(key)
    return 0


def cmd_train(args) -> int:
    settings = _settings(args.data_dir)
    from worker.finetune import train_from_recipe

    try:
        train_from_recipe(
            Path(args.recipe),
            Path(args.data),
            Path(args.out),
            validation_path=Path(args.validation_data) if args.validation_data else None,
            device=args.device,
            settings=settings,
        )
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunehouse", description="Self-hosted fine-tuning service.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run migrations, then the API (and a training and an inference worker)")
    serve.add_argument("--data-dir", help="where local state lives (default ./data or TUNEHOUSE_DATA_DIR)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="do not start workers beside the API")
    serve.set_defaults(func=cmd_serve)

    worker = commands.add_parser("worker", help="run a Celery worker with the service's configuration")
    worker.add_argument("--data-dir")
    worker.add_argument(
        "--queues", help="comma-separated: train, inference, default (default: all; a worker without 'train' keeps models loaded)"
    )
    worker.add_argument("--concurrency", type=int, default=1, help="processes; 1 per GPU")
    worker.set_defaults(func=cmd_worker)

    train = commands.add_parser("train", help="re-run a job's training from its recipe, without the service")
    train.add_argument("--recipe", required=True, help="recipe.yaml (or .json) from GET /v1/fine_tuning/jobs/{id}/recipe")
    train.add_argument("--data", required=True, help="the training JSONL file")
    train.add_argument("--validation-data", help="the validation JSONL file, if the job had one")
    train.add_argument("--out", required=True, help="output folder (adapter/, metrics.csv, recipe.yaml)")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    train.add_argument("--data-dir", help="where the base model cache lives")
    train.set_defaults(func=cmd_train)

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a user if needed and a new API key")
    create.add_argument("--user", required=True)
    create.add_argument("--data-dir")
    create.set_defaults(func=cmd_keys_create)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
