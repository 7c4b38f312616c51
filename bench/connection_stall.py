"""A connection whose endpoint stalls, under 100 concurrent `test` actions,
while another user uses the API.

    .venv/bin/python bench/connection_stall.py [--clients 100] [--read-timeout 120]

Starts the API in this process (embedded parts, a temporary data directory),
registers a connection to a loopback endpoint that accepts connections and
never answers, sends `--clients` concurrent `POST /v1/connections/{name}/test`,
and while they are under way times five `GET /v1/files` of another user.
Printed: those five (status, seconds), then the test actions' answers counted
by (status, error code), the slowest, and the time until all were answered.
Loopback only; nothing is kept.
"""

import argparse
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from domain.settings import Settings  # noqa: E402
from tests.conftest import running_service, wait_for  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--read-timeout", type=float, default=120.0, help="TUNEHOUSE_CONNECTION_READ_TIMEOUT")
    args = parser.parse_args()

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: [held.append(listener.accept()[0]) for _ in iter(int, 1)], daemon=True).start()
    silent_url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"

    settings = Settings(data_dir=Path(tempfile.mkdtemp()), connection_read_timeout=args.read_timeout)
    with running_service("sqlite-local", settings) as service:
        alice, bob = service.make_user("alice"), service.make_user("bob")

        def client(user) -> httpx.Client:
            return httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {user.key}"}, timeout=600)

        with client(alice) as a:
            a.post("/v1/connections", json={"name": "silent", "base_url": silent_url, "api_key": "sk-bench"})
        answers: list[tuple[int, str | None, float]] = []

        def test_once(_) -> None:
            with client(alice) as c:
                started = time.monotonic()
                response = c.post("/v1/connections/silent/test")
                body = response.json()
                code = (body.get("error") or {}).get("code")
                answers.append((response.status_code, code, time.monotonic() - started))

        started = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            futures = [pool.submit(test_once, i) for i in range(args.clients)]
            wait_for(lambda: len(held) >= 1, 30, "a test action to reach the endpoint")
            with client(bob) as b:
                others = []
                for _ in range(5):
                    t = time.monotonic()
                    others.append((b.get("/v1/files").status_code, round(time.monotonic() - t, 3)))
            print("another user's GET /v1/files while the test actions wait (status, s):", others)
            for future in futures:
                future.result()
        print("test actions (status, error code):", dict(Counter((s, c) for s, c, _ in answers)))
        print(f"slowest {max(t for *_, t in answers):.1f} s; all answered after {time.monotonic() - started:.1f} s")
    listener.close()


if __name__ == "__main__":
    main()
