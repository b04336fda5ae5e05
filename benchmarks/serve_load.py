"""Load test for ``medhub serve``: many concurrent clients downloading files from one server on 127.0.0.1.

Three cases (``--case``):

- ``mixed`` (default): each client is a process with its own HTTP connection that downloads the repo's
  files in turn (a small ``config.json`` and a larger LFS weights file) through ``/resolve/main/...`` for a
  fixed time. ``--baseline`` runs the same load against ``python -m http.server`` serving the same bytes.
- ``large``: 32 clients (``--clients``) download one 64 MiB LFS file (``--big-kib``) over and over, streamed
  and discarded; medhub serve and ``python -m http.server`` are run alternately ``--repeat`` times, side by
  side, and the ratio of their MB/s is reported per pair and as the median.
- ``memory``: a dataset repo of ``--files`` files and ``--commits`` commits (each a full tree) is built
  with the store's API and served; the server's resident size (VmRSS) is read after ``list_repo_commits``,
  after the recursive trees of every tenth commit, and after a second round of both.
- ``slow``: ``--slow-clients`` connections (default 1,100) each send half a request's headers and stall;
  meanwhile a real client (huggingface_hub's ``hf_hub_download``) fetches a file ``--probes`` times. Reports
  how many probes succeeded, their latency, and the server's open file descriptors while under attack.

Prints one JSON object as its last line.

    python benchmarks/serve_load.py --quick
    python benchmarks/serve_load.py --clients 16 --seconds 10 --baseline
    python benchmarks/serve_load.py --case large --repeat 5
    python benchmarks/serve_load.py --case slow
    python benchmarks/serve_load.py --case memory --files 4000 --commits 600
"""

from __future__ import annotations

import os

os.environ["HF_HUB_DISABLE_XET"] = "1"  # before huggingface_hub is imported
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import secrets  # noqa: E402
import select  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

MAX_CLIENTS = 64
MAX_SECONDS = 120


def _start(command: list[str], pattern: str, fd_limit: int | None = None) -> tuple[subprocess.Popen, int]:
    """Start a server and read its port from the first stdout line matching ``pattern``.

    ``fd_limit`` sets the server's open-files limit (soft and hard), as a service manager would.
    """

    def limit() -> None:
        if fd_limit:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=limit
    )
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
        got = 0
        try:
            with session.get(urls[i % len(urls)], timeout=60, stream=True) as r:
                ok = r.status_code == 200
                for chunk in r.iter_content(1 << 20):  # streamed and discarded, as a download to disk
                    got += len(chunk)
        except requests.RequestException:
            ok = False
        latencies.append(time.perf_counter() - start)
        if ok:
            done, size = done + 1, size + got
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


def _medhub_server(
    work: Path, token: str, extra: tuple[str, ...] = (), fd_limit: int | None = None
) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-m", "medhub", "serve", "--root", str(work / "root"), "--port", "0", *extra]
    pattern = r"Serving on http://[^:]+:(\d+)"
    return _start(command + ["--token-file", str(work / "tokens")], pattern, fd_limit)


def _static_server(folder: Path) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(folder)]
    return _start(command, r"port (\d+)")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(30)


def large_case(clients: int, seconds: float, big: int, repeat: int) -> dict:
    """medhub serve and http.server, alternately, each serving one large file to ``clients`` clients."""
    with tempfile.TemporaryDirectory(prefix="medhub-serve-large-") as tmp:
        work, token = Path(tmp), f"bench-{secrets.token_hex(12)}"
        (work / "tokens").write_text(token + "\n")
        (work / "up").mkdir()
        (work / "up" / "model.safetensors").write_bytes(os.urandom(big))
        server, port = _medhub_server(work, token)
        try:
            from huggingface_hub import HfApi

            api = HfApi(endpoint=f"http://127.0.0.1:{port}", token=token)
            api.create_repo("bench/large")
            api.upload_folder(folder_path=work / "up", repo_id="bench/large")
        finally:
            _stop(server)
        runs = []
        for _ in range(repeat):
            server, port = _medhub_server(work, token)
            try:
                ours = _load([f"http://127.0.0.1:{port}/bench/large/resolve/main/model.safetensors"], token, clients, seconds)
            finally:
                _stop(server)
            static, static_port = _static_server(work / "up")
            try:
                base = _load([f"http://127.0.0.1:{static_port}/model.safetensors"], token, clients, seconds)
            finally:
                _stop(static)
            ratio = round(ours["mb_per_s"] / base["mb_per_s"], 2) if base["mb_per_s"] else None
            runs.append({"medhub": ours, "http_server": base, "ratio": ratio})
            print(f"large: medhub {ours['mb_per_s']} MB/s, http.server {base['mb_per_s']} MB/s, ratio {ratio}", file=sys.stderr)
    ratios = [r["ratio"] for r in runs if r["ratio"] is not None]
    return {
        "benchmark": "serve_load",
        "case": "large",
        "clients": clients,
        "seconds": seconds,
        "big_file_bytes": big,
        "runs": runs,
        "ratio_mb_per_s_median": statistics.median(ratios) if ratios else None,
    }


def _half_sent(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that each send half a request's headers, then nothing."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    socks = []
    for _ in range(count):
        sock = socket.socket()
        try:
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /api/models/x/y HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        except OSError:
            sock.close()
            continue
        socks.append(sock)
    return socks


def slow_case(slow_clients: int, probes: int, extra: tuple[str, ...], fd_limit: int) -> dict:
    """A real client's downloads while ``slow_clients`` connections hold half-sent headers.

    The server runs with an open-files limit of ``fd_limit`` (soft and hard; 1024 is a common default).
    """
    from huggingface_hub import HfApi, hf_hub_download

    with tempfile.TemporaryDirectory(prefix="medhub-serve-slow-") as tmp:
        work, token = Path(tmp), f"bench-{secrets.token_hex(12)}"
        (work / "tokens").write_text(token + "\n")
        server, port = _medhub_server(work, token, extra, fd_limit)
        endpoint = f"http://127.0.0.1:{port}"
        try:
            api = HfApi(endpoint=endpoint, token=token)
            api.create_repo("bench/slow")
            api.upload_file(path_or_fileobj=b'{"a": 1}', path_in_repo="config.json", repo_id="bench/slow")
            start = time.perf_counter()
            socks = _half_sent(port, slow_clients)
            opened = time.perf_counter() - start
            time.sleep(1)  # let the server accept what it will
            fds = len(os.listdir(f"/proc/{server.pid}/fd")) if os.path.isdir(f"/proc/{server.pid}") else None
            ok, latencies, failures = 0, [], []
            for i in range(probes):
                t = time.perf_counter()
                try:
                    hf_hub_download("bench/slow", "config.json", endpoint=endpoint, token=token,
                                    cache_dir=work / f"cache{i}", etag_timeout=30)
                    ok += 1
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    failures.append(type(exc).__name__)
                latencies.append(time.perf_counter() - t)
            alive = 0
            for sock in socks:  # which half-sent connections does the server still hold?
                sock.setblocking(False)
                try:
                    sock.recv(1)  # b"" (or an error): the server closed it
                except BlockingIOError:
                    alive += 1
                except OSError:
                    pass
            for sock in socks:
                sock.close()
        finally:
            _stop(server)
    return {
        "benchmark": "serve_load",
        "case": "slow",
        "slow_clients": slow_clients,
        "slow_connected": len(socks),
        "seconds_to_open": round(opened, 2),
        "server_fds_under_attack": fds,
        "half_sent_still_open_after_probes": alive,
        "probes": probes,
        "probes_ok": ok,
        "probe_failures": failures,
        "probe_p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "probe_max_ms": round(1000 * max(latencies), 1) if latencies else None,
        "server_args": list(extra),
        "server_fd_limit": fd_limit,
    }


def _rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS:"))


def memory_case(files: int, commits: int, extra: tuple[str, ...]) -> dict:
    """The server's resident size along a long sequence of history and tree reads (Linux only)."""
    from huggingface_hub import HfApi

    from medhub.serve.protocol import RepoRef
    from medhub.serve.storage import Store, file_entry
    from medhub.serve.tree import Operation

    with tempfile.TemporaryDirectory(prefix="medhub-serve-memory-") as tmp:
        work, token = Path(tmp), f"bench-{secrets.token_hex(12)}"
        (work / "tokens").write_text(token + "\n")
        store, repo = Store(work / "root"), RepoRef("datasets", "bench", "big")
        store.create_repo(repo, private=False, author="bench")
        one = file_entry(store.put_bytes(b"x"), 1, lfs=False, data=b"x")
        names = [f"split{i % 40}/shard-{i:05d}-of-a-dataset-with-long-names.csv" for i in range(files)]
        store.create_commit(repo, "main", [Operation("add", n, one) for n in names], summary="add", author="b")
        for i in range(commits - 2):
            data = str(i).encode()
            entry = file_entry(store.put_bytes(data), len(data), lfs=False, data=data)
            store.create_commit(repo, "main", [Operation("add", f"log/{i}.txt", entry)], summary=f"{i}", author="b")
        del store
        server, port = _medhub_server(work, token, extra)
        try:
            api = HfApi(endpoint=f"http://127.0.0.1:{port}", token=token)
            rss = {"start": _rss_mib(server.pid)}
            history = api.list_repo_commits("bench/big", repo_type="dataset")
            rss["after_history"] = _rss_mib(server.pid)
            for label in ("after_trees", "after_second_round"):
                for c in history[::10]:
                    list(api.list_repo_tree("bench/big", repo_type="dataset", revision=c.commit_id, recursive=True))
                api.list_repo_commits("bench/big", repo_type="dataset")
                rss[label] = _rss_mib(server.pid)
        finally:
            _stop(server)
    return {"benchmark": "serve_load", "case": "memory", "files": files, "commits": commits,
            "server_args": list(extra), "vmrss_mib": rss}


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
    parser.add_argument(
        "--case", choices=("mixed", "large", "slow", "memory"), default="mixed", help="see the module doc"
    )
    parser.add_argument("--files", type=int, default=4000, help="memory: files in the repo (default 4000)")
    parser.add_argument("--commits", type=int, default=600, help="memory: commits (default 600)")
    parser.add_argument("--repeat", type=int, default=3, help="large: side-by-side pairs of runs (default 3)")
    parser.add_argument("--slow-clients", type=int, default=1100, help="slow: half-sent connections (default 1100)")
    parser.add_argument("--probes", type=int, default=20, help="slow: real downloads during the attack (default 20)")
    parser.add_argument("--server-arg", action="append", default=[], help="slow: extra medhub serve option (repeatable)")
    parser.add_argument("--fd-limit", type=int, default=1024, help="slow: the server's open-files limit (default 1024)")
    args = parser.parse_args()
    if args.case == "large":
        clients = min(MAX_CLIENTS, args.clients or (4 if args.quick else 32))
        seconds = min(MAX_SECONDS, args.seconds or (3 if args.quick else 10))
        big = 1024 * (args.big_kib or (4096 if args.quick else 65536))
        print(json.dumps(large_case(clients, seconds, big, max(1, min(args.repeat, 20)))))
        return
    if args.case == "memory":
        files, commits = (500, 50) if args.quick else (min(args.files, 100_000), max(3, min(args.commits, 5000)))
        print(json.dumps(memory_case(files, commits, tuple(args.server_arg))))
        return
    if args.case == "slow":
        count = min(args.slow_clients, 200) if args.quick else min(args.slow_clients, 5000)
        report = slow_case(count, 3 if args.quick else args.probes, tuple(args.server_arg), args.fd_limit)
        print(json.dumps(report))
        return
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
