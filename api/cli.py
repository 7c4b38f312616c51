"""The `tunehouse` command: serve, worker, migrate, train, import, move, keys, convert."""

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
    from domain.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def _prepare_database(settings) -> None:
    from domain.db import migrate

    migrate(settings.database_url)


def _write_admin_key(settings) -> None:
    from domain.auth.service import bootstrap_admin
    from domain.db import make_engine, make_sessionmaker

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
        # JSON logs: no uvicorn logging config of its own, so its loggers (the
        # access log included) propagate to our root handler and formatter.
        # Text: uvicorn's usual lines, as before.
        logging_options = {"log_config": None} if settings.log_format == "json" else {}
        config = uvicorn.Config(
            create_app(settings), host=args.host, port=args.port, log_level="info", **logging_options
        )
        print(f"tunehouse serving on http://{args.host}:{args.port} (data in {settings.data_dir})", flush=True)
        uvicorn.Server(config).run()  # returns after SIGINT/SIGTERM, once requests drain
    finally:
        for worker in workers:
            _stop_worker(worker)
    return 0


def _celery_logs_through_ours(**_kwargs) -> None:
    """Celery's setup_logging signal: with a receiver, Celery sets up no logging
    of its own, so all its loggers propagate to the root handler main()
    installed (text or JSON), in the forked pool processes too. Without it
    Celery would still give its task logger and billiard's process logger
    handlers and formats of their own."""
    from celery.utils.log import get_multiprocessing_logger

    process_logger = get_multiprocessing_logger()  # "Process ... exited with signal 9" and the like
    if process_logger is not None:
        process_logger.propagate = True
        process_logger.setLevel(logging.ERROR)  # Celery's level for it (its INFO lines are noise)


# Tasks an inference worker takes at once by default: each is a thread that
# waits on the decode loop, so this bounds concurrent chat users per worker,
# not compute (the loop's batch budget does that).
INFERENCE_TASKS = 32


def cmd_worker(args) -> int:
    _settings(args.data_dir)
    # Before torch (and its OpenMP runtime) loads. A worker shares the cores
    # with the API and the other workers (two on one machine in embedded
    # mode); OpenMP's default busy-waiting then makes every thread that waits
    # at a barrier spin against the others: on 2 cores a tiny model's
    # training step took 0.6-1 s instead of 15-20 ms. Passive waiting costs
    # little when the worker has the machine to itself. Set it to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from celery.signals import setup_logging

    from domain.queue import ALL_QUEUES, TRAIN_QUEUE
    from worker.celery_app import app, preload_ml_stack

    setup_logging.connect(_celery_logs_through_ours, weak=False)
    preload_ml_stack()
    from api.startup import freeze_startup_objects

    freeze_startup_objects()  # before the pool forks or the decode loop starts: short collections

    queues = args.queues or ",".join(ALL_QUEUES)
    if TRAIN_QUEUE in queues.split(","):
        # Training: one fresh pool process per job (worker_max_tasks_per_child=1),
        # one job per process.
        pool, concurrency = "prefork", args.concurrency or 1
    else:
        # Inference: one process that keeps the loaded base models
        # (worker/inference/engine.py) and runs many tasks at once in threads
        # (chat requests, batches, evaluations), all of them feeding one
        # decode loop (worker/inference/loop.py), which owns the models.
        app.conf.worker_max_tasks_per_child = None
        pool, concurrency = "threads", args.concurrency or INFERENCE_TASKS
    app.worker_main(
        [
            "worker",
            "--loglevel=INFO",
            f"--queues={queues}",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            f"--hostname=tunehouse-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    # Celery has stopped: tasks are acknowledged or handed back, the pool is
    # gone and the worker_shutdown handlers (the device row removed) have run.
    # The interpreter's own teardown of the ML stack took another ~2 s of
    # every worker's stop and guards nothing: the logs are flushed, then the
    # process ends.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cmd_keys_create(args) -> int:
    from domain.auth.service import create_key, get_or_create_user

    def create(session) -> int:
        try:
            user = get_or_create_user(session, args.user)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        key = create_key(session, user)
        session.commit()
        print(f"New API key for user '{args.user}':")
        print(key)
        return 0

    return _with_key_session(args, create)


def cmd_migrate(args) -> int:
    """What `serve` does before serving, alone: for a one-shot migrate container."""
    settings = _settings(args.data_dir)
    _prepare_database(settings)
    _write_admin_key(settings)
    print(f"database at head ({_redacted(settings.database_url)})", flush=True)
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _utc(timestamp: int | None) -> str:
    from datetime import datetime, timezone

    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _with_key_session(args, action) -> int:
    from domain.auth.service import KeyManagementError
    from domain.db import make_engine, make_sessionmaker

    settings = _settings(args.data_dir)
    _prepare_database(settings)
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            try:
                return action(session)
            except KeyManagementError as exc:
                session.rollback()
                print(f"error: {exc}", file=sys.stderr)
                return 2
    finally:
        engine.dispose()


def cmd_keys_revoke(args) -> int:
    from domain.auth.service import revoke_keys

    def revoke(session) -> int:
        revoked = revoke_keys(session, key=args.key, user_name=args.user)
        session.commit()
        if not revoked:
            print("error: nothing revoked (revoked by someone else meanwhile)", file=sys.stderr)
            return 2
        for api_key in revoked:
            print(
                f"Revoked {api_key.display_prefix}... of user '{api_key.user.name}' "
                f"(created {_utc(api_key.created_at)}, revoked {_utc(api_key.revoked_at)})"
            )
        return 0

    return _with_key_session(args, revoke)


def cmd_keys_list(args) -> int:
    from domain.auth.service import list_keys

    def show(session) -> int:
        rows = [
            (k.display_prefix, k.user.name, _utc(k.created_at), _utc(k.revoked_at))
            for k in list_keys(session, args.user)
        ]
        header = ("PREFIX", "USER", "CREATED", "REVOKED")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        return 0

    return _with_key_session(args, show)


def cmd_train(args) -> int:
    from domain.errors import ServiceError

    if (args.recipe is None) == (args.bundle is None):
        print("error: give --recipe (with --data) or --bundle", file=sys.stderr)
        return 2
    if args.recipe and not args.data:
        print("error: --recipe needs --data, the training JSONL file", file=sys.stderr)
        return 2
    settings = _settings(args.data_dir)
    from worker.training.offline import train_from_bundle, train_from_recipe

    optional = {
        "validation_path": Path(args.validation_data) if args.validation_data else None,
        "device": args.device,
        "settings": settings,
        "parent_adapter": Path(args.parent_adapter) if args.parent_adapter else None,
    }
    try:
        if args.bundle:
            train_from_bundle(Path(args.bundle), Path(args.out),
                              data_path=Path(args.data) if args.data else None, **optional)
        else:
            train_from_recipe(Path(args.recipe), Path(args.data), Path(args.out), **optional)
    except (OSError, ValueError, KeyError, ServiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_import(args) -> int:
    """A bundle as a user's fine-tune in this deployment (domain/bundles/importer.py)."""
    from domain.auth.repository import UserRepository
    from domain.bundles.importer import import_bundle
    from domain.db import make_engine, make_sessionmaker
    from domain.errors import ServiceError
    from domain.storage import storage_from_url

    settings = _settings(args.data_dir)
    _prepare_database(settings)
    engine = make_engine(settings.database_url)
    db = make_sessionmaker(engine)
    try:
        with db() as session:
            user = UserRepository(session).get_by_name(args.user)
            if user is None:
                print(f"error: no user '{args.user}' (`tunehouse keys create --user {args.user}` makes one)",
                      file=sys.stderr)
                return 2
            session.expunge(user)
        storage = storage_from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
        with open(args.bundle, "rb") as handle:
            job = import_bundle(db, storage, settings, user, handle)
    except (OSError, ServiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"Imported as {job.fine_tuned_model} (job {job.id}) for user '{args.user}'")
    return 0


def cmd_move(args) -> int:
    """A provider's fine-tuning jobs moved to a user here (domain/moves/service.py, docs/moving.md):
    the plan with every mapping, the jobs created, and with --compare, once each has trained, the
    provider's fine-tune compared with the new one. Exit 2: refused, nothing changed; 1: a job or
    comparison failed or did not finish within --wait."""
    import time

    from domain.auth.repository import UserRepository
    from domain.db import make_engine, make_sessionmaker
    from domain.errors import ServiceError
    from domain.evaluations.service import get_evaluation
    from domain.files.service import delete_file
    from domain.jobs.service import get_job
    from domain.moves import service, text
    from domain.moves.repository import MoveRepository
    from domain.evaluations.schemas import JudgeSpec
    from domain.moves.schemas import CompareRequest, MoveRequest, PlanRequest
    from domain.queue_client import TaskQueue
    from domain.storage import storage_from_url

    settings = _settings(args.data_dir)
    _prepare_database(settings)
    engine = make_engine(settings.database_url)
    db = make_sessionmaker(engine)
    parts = service.Parts(db, storage_from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url),
                          settings, TaskQueue(settings))
    uploaded: list[str] = []
    try:
        with db() as session:
            user = UserRepository(session).get_by_name(args.user)
            if user is None:
                print(f"error: no user '{args.user}'", file=sys.stderr)
                return 2
            session.expunge(user)
            judges = [JudgeSpec(kind=kind, model=model) for kind, _, model in (j.partition("=") for j in args.judge or [])]
            plan = service.plan(session, settings, user, PlanRequest(
                connection=args.connection, base_model=args.base_model, jobs=args.job or None))
            print(text.plan_text(plan), end="\n\n")
            here = {f.provider_file_id: f.file_id for job in plan.jobs for f in job.files if f.state == "matched"}
            uploads = {}
            for pair in args.upload or []:
                provider_file_id, _, path = pair.partition("=")
                if provider_file_id in here:
                    print(f"{path}: the provider's file {provider_file_id} is here already as {here[provider_file_id]}")
                    continue
                with open(path, "rb") as handle:
                    file = service.store_file(parts, user, iter(lambda: handle.read(1 << 20), b""), Path(path).name)
                uploaded.append(file.id)
                uploads[provider_file_id] = file.id
            chosen = args.job or [job.provider_job_id for job in plan.jobs if service.ready(job, uploads)]
            if not chosen:
                print("Nothing to move.")
                return 0
            moved = service.move(session, parts, user, MoveRequest(
                connection=args.connection, base_model=args.base_model, jobs=chosen, uploads=uploads or None))
            print(text.move_text(moved))
    except (OSError, ValueError, ServiceError) as exc:  # ValueError: pydantic's, e.g. a --judge of no kind
        with db() as session:  # a refused move leaves nothing behind, the copies it was given included
            for file_id in uploaded:
                delete_file(session, parts.storage, user, file_id)
        print(f"error: {exc}", file=sys.stderr)
        engine.dispose()
        return 2
    if not args.compare:
        engine.dispose()
        return 0

    def finished(read, object_id):
        deadline = time.monotonic() + args.wait
        while True:
            with db() as session:
                found = read(session, user, object_id)
                if found.status in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
                    session.expunge(found)
                    return found
            time.sleep(args.poll)

    failures = 0
    try:
        for job in moved.jobs:
            done = finished(get_job, job.fine_tuning_job_id)
            print(f"{done.id}: {done.status}" + (f" ({done.fine_tuned_model})" if done.fine_tuned_model else ""))
            if done.status != "succeeded":
                failures += 1
                continue
            with db() as session:
                earlier = MoveRepository(session, user.id).comparisons([done.id]).get(done.id)
                evaluation_id = earlier or service.compare(session, parts, user, CompareRequest(
                    fine_tuning_job_id=done.id, judges=judges or None)).id
            evaluation = finished(get_evaluation, evaluation_id)
            print(f"comparison {evaluation.id}: {evaluation.status}")
            print(text.results_text(evaluation.results or {}))
            failures += evaluation.status != "succeeded"
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 1 if failures else 0


def cmd_convert(args) -> int:
    """Exit 0: every record converted; 1: some could not be (each named on
    stderr, the others written); 2: the input could not be read at all."""
    from domain.files.convert import convert_file

    try:
        conversion = convert_file(args.source, Path(args.input), Path(args.output))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for number, reason in conversion.problems:
        print(f"{conversion.unit} {number}: {reason}", file=sys.stderr)
    print(f"{args.output}: {conversion.summary()}")
    return 1 if conversion.problems else 0


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
    worker.add_argument(
        "--concurrency",
        type=int,
        help=f"training worker: processes, 1 per GPU (default 1); inference worker: requests, batches and "
        f"evaluations taken at once, in threads of one process sharing its models (default {INFERENCE_TASKS})",
    )
    worker.set_defaults(func=cmd_worker)

    migrate = commands.add_parser(
        "migrate", help="bring the database schema to head and create the admin key on an empty database, then exit"
    )
    migrate.add_argument("--data-dir")
    migrate.set_defaults(func=cmd_migrate)

    train = commands.add_parser(
        "train", help="re-run a job's training from its recipe or its bundle, without the service"
    )
    train.add_argument("--recipe", help="recipe.yaml (or .json) from GET /v1/fine_tuning/jobs/{id}/recipe")
    train.add_argument(
        "--bundle",
        help="a bundle from GET /v1/fine_tuning/jobs/{id}/bundle: checked against its SHA256SUMS, re-run on its "
        "data (or --data), then the largest difference from its losses is printed",
    )
    train.add_argument("--data", help="the training JSONL file (with --bundle: instead of the bundle's)")
    train.add_argument("--validation-data", help="the validation JSONL file, if the job had one")
    train.add_argument("--out", required=True, help="output folder (adapter/, metrics.csv, recipe.yaml)")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    train.add_argument(
        "--parent-adapter",
        help="for a job that continued a fine-tune: that fine-tune's adapter folder (its download unzipped, "
        "or the adapter/ of re-running the parent's recipe)",
    )
    train.add_argument("--data-dir", help="where the base model cache lives")
    train.set_defaults(func=cmd_train)

    importing = commands.add_parser(
        "import", help="register a bundle (GET /v1/fine_tuning/jobs/{id}/bundle) as a user's fine-tune here"
    )
    importing.add_argument("bundle", help="the bundle zip")
    importing.add_argument("--user", required=True, help="the user whose fine-tune it becomes (must exist)")
    importing.add_argument("--data-dir")
    importing.set_defaults(func=cmd_import)

    moving = commands.add_parser(
        "move", help="move fine-tuning jobs from a hosted OpenAI-compatible provider (a connection of the user's) here"
    )
    moving.add_argument("--user", required=True, help="the user whose connection it is and whose jobs they become")
    moving.add_argument("--connection", required=True, help="the user's connection to the provider")
    moving.add_argument("--base-model", required=True, help="the open-weight base model the jobs train here")
    moving.add_argument("--job", action="append", help="a provider job id (repeat; default: every job that can move)")
    moving.add_argument("--upload", action="append", metavar="PROVIDER_FILE_ID=PATH",
                        help="your copy of a file the provider does not hand back (matched by name, size and lines)")
    moving.add_argument("--compare", action="store_true",
                        help="wait for the jobs, then compare each with the provider's fine-tune")
    moving.add_argument("--judge", action="append", metavar="KIND=MODEL",
                        help="with --compare: an LLM judge, e.g. pairwise=MODEL or reference=MODEL")
    moving.add_argument("--wait", type=float, default=6 * 3600, help="with --compare: seconds to wait for each")
    moving.add_argument("--poll", type=float, default=5.0, help=argparse.SUPPRESS)
    moving.add_argument("--data-dir")
    moving.set_defaults(func=cmd_move)

    convert = commands.add_parser(
        "convert", help="convert Alpaca, ShareGPT or 'Human: ... Bot: ...' data into chat JSONL (docs/data-formats.md)"
    )
    convert.add_argument("--from", dest="source", required=True, choices=["alpaca", "sharegpt", "transcript"])
    convert.add_argument("input", help="JSONL (or one JSON array for alpaca and sharegpt; plain lines for transcript)")
    convert.add_argument("output", help="the chat JSONL file to write")
    convert.set_defaults(func=cmd_convert)

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a user if needed and a new API key")
    create.add_argument("--user", required=True)
    create.add_argument("--data-dir")
    create.set_defaults(func=cmd_keys_create)
    revoke = key_commands.add_parser(
        "revoke",
        help="revoke a key (refused from the next request on); exit 2 when nothing matches",
    )
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--key", help="the whole key, or its display prefix as `keys list` shows it")
    target.add_argument("--user", help="revoke every active key of this user")
    revoke.add_argument("--data-dir")
    revoke.set_defaults(func=cmd_keys_revoke)
    listing = key_commands.add_parser("list", help="list keys: display prefix, user, created, revoked (UTC)")
    listing.add_argument("--user", help="only this user's keys")
    listing.add_argument("--data-dir")
    listing.set_defaults(func=cmd_keys_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from domain.observability.logs import configure_logging
    from domain.settings import get_settings

    args = build_parser().parse_args(argv)
    try:
        log_format = get_settings().log_format
    except ValidationError as exc:
        print(f"error: invalid configuration: {exc}", file=sys.stderr)
        return 2
    # On the root logger: the worker's Celery (worker_hijack_root_logger off)
    # and its forked pool processes log through it too.
    configure_logging(log_format)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
