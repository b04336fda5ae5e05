"""Load test for ``medhub serve``: many concurrent clients downloading files from one server on 127.0.0.1.

Each client is a process with its own HTTP connection that downloads the repo's files in turn (a small
``config.json`` and a larger LFS weights file) through ``/resolve/main/...`` for a fixed time. The same
load can be run against ``python -m http.server`` serving the same bytes as static files (``--baseline``),
which gives a reference point on the same machine. Prints one JSON object as its last line.

    python benchmarks/serve_load.py --quick
    python benchmarks/serve_load.py --clients 16 --seconds 10 --baseline
"""

from __future__ import annotations

import os

os.environ["HF_HUB_DISABLE_XET"] = "1"  # before huggingface_hub is imported
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import select  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

MAX_CLIENTS = 64
MAX_SECONDS = 120


def _start(command: list[str], pattern: str) -> tuple[subprocess.Popen, int]:
    """Start a server and read its port from the first stdout line matching ``pattern``."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            match = re.search(pattern, proc.stdout.readline())
            if match:
                return proc, int(match.group(1))
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"server did not start: {' '.join(command)}")


def _client(urls: list[str], token: str, seconds: float, out: mp.Queue) -> None:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    done, size, errors, latencies = 0, 0, 0, []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        start = time.perf_counter()
        try:
            r = session.get(urls[i % len(urls)], timeout=30)
            ok = r.status_code == 200
        except requests.RequestException:
            ok = False
        latencies.append(time.perf_counter() - start)
        if ok:
            done, size = done + 1, size + len(r.content)
        else:
            errors += 1
        i += 1
    out.put((done, size, errors, latencies))


def _load(urls: list[str], token: str, clients: int, seconds: float) -> dict:
    """Run ``clients`` processes for ``seconds`` and sum up what they downloaded."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(urls, token, seconds, queue)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    done = sum(r[0] for r in results)
    size = sum(r[1] for r in results)
    latencies = sorted(x for r in results for x in r[3])
    return {
        "downloads": done,
        "errors": sum(r[2] for r in results),
        "downloads_per_s": round(done / seconds, 1),
        "mb_per_s": round(size / seconds / 1e6, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
    }


def _seed(endpoint: str, token: str, folder: Path, big_bytes: int) -> list[str]:
    """A repo with a small regular file and an LFS weights file; returns the files' names."""
    from huggingface_hub import HfApi

    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 3}))
    (folder / "model.safetensors").write_bytes(os.urandom(big_bytes))
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo("bench/model")
    api.upload_folder(folder_path=folder, repo_id="bench/model")
    return ["config.json", "model.safetensors"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 clients, 3 s, 256 KiB weights")
    parser.add_argument(
        "--clients", type=int, help=f"concurrent client processes (max {MAX_CLIENTS}; default 16)"
    )
    parser.add_argument("--seconds", type=float, help=f"duration of the load (max {MAX_SECONDS}; default 10)")
    parser.add_argument("--big-kib", type=int, help="size of the weights file in KiB (default 4096)")
    parser.add_argument(
        "--baseline", action="store_true", help="also run the load against python -m http.server"
    )
    args = parser.parse_args()
    clients = min(MAX_CLIENTS, args.clients or (4 if args.quick else 16))
    seconds = min(MAX_SECONDS, args.seconds or (3 if args.quick else 10))
    big = 1024 * (args.big_kib or (256 if args.quick else 4096))

    with tempfile.TemporaryDirectory(prefix="medhub-serve-load-") as tmp:
        work, token = Path(tmp), f"bench-{secrets.token_hex(12)}"
        (work / "tokens").write_text(token + "\n")
        (work / "up").mkdir()
        command = [sys.executable, "-m", "medhub", "serve", "--root", str(work / "root"), "--port", "0"]
        server, port = _start(
            command + ["--token-file", str(work / "tokens")], r"Serving on http://[^:]+:(\d+)"
        )
        try:
            endpoint = f"http://127.0.0.1:{port}"
            files = _seed(endpoint, token, work / "up", big)
            result = {
                "server": "medhub serve",
                **_load([f"{endpoint}/bench/model/resolve/main/{f}" for f in files], token, clients, seconds),
            }
        finally:
            server.terminate()
            server.wait(30)
        report = {
            "benchmark": "serve_load",
            "clients": clients,
            "seconds": seconds,
            "big_file_bytes": big,
            **result,
        }
        if args.baseline:
            static = [
                sys.executable,
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
                str(work / "up"),
            ]
            base, base_port = _start(static, r"port (\d+)")
            try:
                found = _load([f"http://127.0.0.1:{base_port}/{f}" for f in files], token, clients, seconds)
            finally:
                base.terminate()
                base.wait(30)
            report["baseline_http_server"] = found
            if found["downloads_per_s"]:
                report["ratio_vs_baseline"] = round(result["downloads_per_s"] / found["downloads_per_s"], 2)
    print(
        f"medhub serve: {result['downloads_per_s']} downloads/s, {result['mb_per_s']} MB/s "
        f"({clients} clients, {seconds:g} s, errors {result['errors']})",
        file=sys.stderr,
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
