"""Load test of the labelling server, loopback only: many idle and half-open connections plus concurrent labellers.

    python benchmarks/label_server_load.py --idle 1500 --labellers 200 --pairs 2000

What it does: queues ``--pairs`` text pairs in a fresh run directory, starts ``rlhf-gym label`` on 127.0.0.1 as a
child process (the real CLI and WSGI server), opens ``--idle`` sockets to it (half of them silent, half stopped in
the middle of a request's headers: the half-open connections that used to pin one server thread each), then runs
``--labellers`` client threads that each fetch a pair and label it over a keep-alive connection until the queue is
empty. It reports request latency percentiles, failures, the server's thread count (from /proc, sampled during the
run), and checks that the store holds exactly the acknowledged labels.

Slowloris (issue 25)::

    python benchmarks/label_server_load.py --slowloris 2100 --idle 0 --labellers 200 --pairs 2000 --reconnect-every 10

runs the server twice with its default limits, each time on a fresh copy of the queue: quiet (labellers only), then
under attack: one client (127.0.0.66, in its own process) opens ``--slowloris`` sockets and sends one header line on
each every ``--slowloris-interval`` s, reopening every socket the server closes, while the labellers work. It prints
both runs' latency percentiles and the ratio of their p99s (the acceptance: within 2x).

Clients have their own loopback addresses (127.1.x.y for labellers, 127.2.x.y for idle sockets): the server caps
connections per client address, and 200 people are 200 addresses.

Bounded: everything stays on 127.0.0.0/8, the child is killed at the end, and the run stops after ``--timeout`` s.
The client is one Python process (threads share its GIL), so on a small machine the latencies include client-side
queueing; they are an upper bound on what the server adds. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from rewardmodels.feedback.label_store import LabelStore, Query, store_path
from rewardmodels.feedback.webapp.server import raise_fd_limit

CHOICES = ("left", "right", "equal", "skip")


def make_run(run: Path, n_pairs: int) -> Path:
    with LabelStore(store_path(run)) as store:
        store.enqueue([Query.text(f"prompt {i}", f"a{i}", f"b{i}", pair_id=f"load-{i}") for i in range(n_pairs)])
    return run


ATTACKER = "127.0.0.66"


def source(group: int, k: int) -> str:
    """The ``k``-th client address of a group: 127.<group>.x.y (Linux routes all of 127.0.0.0/8 to loopback)."""
    return f"127.{group}.{k // 250}.{k % 250 + 1}"


def open_idle(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that never finish a request, one client each: even ones silent, odd ones stopped inside
    the headers."""
    socks = []
    for k in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source(2, k), 0))
        if k % 2:
            s.sendall(b"GET /api/progress HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
        socks.append(s)
    return socks


def closed_by_server(socks: list[socket.socket], wait_s: float) -> int:
    """How many of ``socks`` the server closed (EOF or reset) within ``wait_s`` seconds from now."""
    deadline, closed = time.monotonic() + wait_s, 0
    for s in socks:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            while s.recv(65536):  # a 408 / 400 answer may come first; then EOF
                pass
            closed += 1
        except ConnectionResetError:
            closed += 1
        except (TimeoutError, OSError):
            pass
    return closed


def _request(conn: http.client.HTTPConnection, method: str, path: str, body=None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    start = time.perf_counter()
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = conn.getresponse()
    payload = json.loads(response.read() or b"null")
    return response.status, payload, time.perf_counter() - start


def _labeller(port: int, name: str, out: dict, deadline: float, address: str, reconnect_every: int) -> None:
    def connect():
        return http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(address, 0))

    conn = connect()
    latencies, acked, failures = [], [], []
    try:
        while time.monotonic() < deadline:
            if reconnect_every and acked and len(acked) % reconnect_every == 0:  # a page reload, an idle timeout
                conn.close()
                conn = connect()
            status, body, dt = _request(conn, "GET", f"/api/next?labeller={name}")
            latencies.append(dt)
            if status != 200:
                failures.append(f"next {status} {body}")
                break
            if body["pair"] is None:
                break
            pid = body["pair"]["pair_id"]
            choice = CHOICES[int(pid.rsplit("-", 1)[1]) % 4]
            status, reply, dt = _request(conn, "POST", "/api/label", {"pair_id": pid, "label": choice,
                                                                      "labeller": name})
            latencies.append(dt)
            if status == 200:
                acked.append((pid, choice, name))
            else:
                failures.append(f"label {pid} {status} {reply}")
    except Exception as exc:  # reported, not raised: the run must count every failure
        failures.append(f"{name}: {exc!r}")
    finally:
        conn.close()
    out[name] = (latencies, acked, failures)


def run_load(port: int, n_labellers: int, probe=None, timeout_s: float = 300.0, reconnect_every: int = 0) -> dict:
    """Run ``n_labellers`` concurrent labellers (one client address each) until the queue is empty; ``probe()``
    (sampled every 0.2 s) returns the server's thread count. ``reconnect_every``: open a new connection after that
    many labels (0: one keep-alive connection each). Returns latencies (s), acknowledged labels, failures and the
    largest probe value."""
    results: dict = {}
    deadline = time.monotonic() + timeout_s
    threads = [threading.Thread(target=_labeller, args=(port, f"user{i}", results, deadline, source(1, i),
                                                        reconnect_every),
                                daemon=True, name=f"labeller-{i}") for i in range(n_labellers)]
    peak, start = 0, time.perf_counter()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if probe is not None:
            peak = max(peak, probe())
        time.sleep(0.2)
    wall = time.perf_counter() - start
    latencies = np.array([x for lat, _, _ in results.values() for x in lat])
    return {"latencies": latencies, "acked": [a for _, acked, _ in results.values() for a in acked],
            "failures": [f for _, _, fail in results.values() for f in fail], "peak_threads": peak, "wall_s": wall,
            "finished": len(results) == n_labellers}


def proc_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def start_cli(run: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "label", "--run", str(run), "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise RuntimeError(f"the label server did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1].strip().rstrip("/"))


class Slowloris:
    """One client (``address``) holding ``n`` sockets, each sent one more header line every ``interval_s`` seconds,
    every socket the server closes reopened at the next pass (as slowloris does). ``run(stop)`` until ``stop`` is
    set; ``first_pass`` is set once every socket was tried. Counts: ``opened``, ``closed_by_server``,
    ``failed_connects``, ``held`` (sockets still open since the pass before the last)."""

    def __init__(self, port: int, n: int, interval_s: float = 2.0, address: str = ATTACKER, first_pass=None):
        self.port, self.n, self.interval_s, self.address = port, n, interval_s, address
        self.first_pass = first_pass if first_pass is not None else threading.Event()
        self.opened = self.closed_by_server = self.failed_connects = self.held = 0

    def _open(self) -> socket.socket | None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2, source_address=(self.address, 0))
            s.sendall(b"GET /api/progress HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        except OSError:
            self.failed_connects += 1
            return None
        self.opened += 1
        return s

    def _alive(self, s: socket.socket) -> bool:
        """False once the server answered or closed it (its 503, a FIN or a reset waiting to be read)."""
        s.setblocking(False)
        try:
            s.recv(4096)  # anything at all (data or EOF) means the server is done with it
            return False
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            s.settimeout(2)

    def run(self, stop) -> dict:
        socks: list[socket.socket | None] = [None] * self.n
        line = 0
        while not stop.is_set():
            start, held = time.monotonic(), 0
            for k, s in enumerate(socks):
                if s is not None and self._alive(s):
                    try:
                        s.sendall(f"X-Slow-{line}: {k}\r\n".encode())
                        held += 1
                        continue
                    except OSError:
                        pass
                if s is not None:
                    s.close()
                    self.closed_by_server += 1
                socks[k] = self._open()
            self.held = held  # sockets the server kept since the previous pass
            self.first_pass.set()
            line += 1
            stop.wait(max(0.0, self.interval_s - (time.monotonic() - start)))
        for s in socks:
            if s is not None:
                s.close()
        return self.counts()

    def counts(self) -> dict:
        return {"held": self.held, "opened": self.opened, "closed_by_server": self.closed_by_server,
                "failed_connects": self.failed_connects}


def _attack_process(port: int, n: int, interval_s: float, stop, first_pass, out) -> None:
    raise_fd_limit(n + 256)
    out.put(Slowloris(port, n, interval_s, first_pass=first_pass).run(stop))


def _one_run(args: argparse.Namespace, attack: int) -> dict:
    """A fresh queue and server (default limits), the labellers, and ``attack`` slowloris sockets (0: quiet)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    stop, first_pass, out = ctx.Event(), ctx.Event(), ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", args.pairs)
        proc, port = start_cli(run, "--threads", str(args.threads))
        attacker = None
        try:
            if attack:
                attacker = ctx.Process(target=_attack_process, args=(port, attack, args.slowloris_interval, stop,
                                                                     first_pass, out), daemon=True)
                attacker.start()
                if not first_pass.wait(300):
                    raise RuntimeError("the attacker did not finish opening its sockets within 300 s")
            stats = run_load(port, args.labellers, timeout_s=args.timeout, reconnect_every=args.reconnect_every)
            stop.set()
            counts = out.get(timeout=120) if attacker is not None else {}
            progress = json.loads(_get(port, "/api/progress"))
        finally:
            stop.set()
            if attacker is not None:
                attacker.join(timeout=30)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        with LabelStore(store_path(run)) as store:
            stored = sorted((r["pair_id"], r["choice"], r["labeller"]) for r in store.rows())
    ok = (not stats["failures"] and stats["finished"] and stored == sorted(stats["acked"])
          and progress["labelled"] == args.pairs)
    return {**stats, "attack": attack, "attacker": counts, "ok": ok}


def slowloris_main(args: argparse.Namespace) -> int:
    """Quiet run, then the same under slowloris; print both and the ratio of the p99 latencies."""
    raise_fd_limit(args.labellers + 256)
    runs = [_one_run(args, 0), _one_run(args, args.slowloris)]
    print("| run | slowloris sockets | labellers | pairs | requests | failures | p50 ms | p90 ms | p99 ms | max ms | "
          "labels/s | attacker: held at the end / opened / closed by the server |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        lat, a = r["latencies"] * 1000, r["attacker"]
        held = f"{a['held']} / {a['opened']} / {a['closed_by_server']}" if a else "-"
        print(f"| {'attack' if r['attack'] else 'quiet'} | {r['attack']} | {args.labellers} | {args.pairs} | "
              f"{len(lat)} | {len(r['failures'])} | {np.percentile(lat, 50):.0f} | {np.percentile(lat, 90):.0f} | "
              f"{np.percentile(lat, 99):.0f} | {lat.max():.0f} | {len(r['acked']) / r['wall_s']:.0f} | {held} |")
    ratio = np.percentile(runs[1]["latencies"], 99) / np.percentile(runs[0]["latencies"], 99)
    ok = all(r["ok"] for r in runs)
    print(f"p99 under attack / quiet: {ratio:.2f} (acceptance: <= 2); every pair labelled and the store == the "
          f"acknowledged labels in both runs: {ok}; failures: {(runs[0]['failures'] + runs[1]['failures'])[:3]}")
    return 0 if ok and ratio <= 2 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=1500, help="idle / half-open connections held during the run")
    parser.add_argument("--labellers", type=int, default=200, help="concurrent labellers")
    parser.add_argument("--pairs", type=int, default=2000, help="pairs queued (the labellers label them all)")
    parser.add_argument("--threads", type=int, default=8, help="server worker threads (rlhf-gym label --threads)")
    parser.add_argument("--timeout", type=float, default=600.0, help="stop the run after this many seconds")
    parser.add_argument("--slowloris", type=int, default=0,
                        help="sockets of one slowloris client: compare a quiet run with one under this attack")
    parser.add_argument("--slowloris-interval", type=float, default=2.0,
                        help="seconds between the header lines sent on each slowloris socket (default 2)")
    parser.add_argument("--reconnect-every", type=int, default=0,
                        help="each labeller opens a new connection after this many labels (0: keep-alive)")
    args = parser.parse_args(argv)
    if args.slowloris:
        return slowloris_main(args)
    raise_fd_limit(args.idle + args.labellers + 256)
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", args.pairs)
        proc, port = start_cli(run, "--threads", str(args.threads), "--max-connections",
                               str(args.idle + args.labellers + 100), "--idle-timeout", str(int(args.timeout) + 60))
        try:
            base = proc_threads(proc.pid)
            idle = open_idle(port, args.idle)
            time.sleep(1.0)
            with_idle = proc_threads(proc.pid)
            stats = run_load(port, args.labellers, probe=lambda: proc_threads(proc.pid), timeout_s=args.timeout,
                             reconnect_every=args.reconnect_every)
            held = len(idle) - closed_by_server(idle, 1.0)  # the server kept them (its idle timeout is longer)
            progress = json.loads(_get(port, "/api/progress"))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        with LabelStore(store_path(run)) as store:
            stored = sorted((r["pair_id"], r["choice"], r["labeller"]) for r in store.rows())
        for s in idle:
            s.close()
    lat = stats["latencies"] * 1000
    print("| idle+half-open | labellers | pairs | requests | failures | p50 ms | p90 ms | p99 ms | max ms | "
          "labels/s | server threads (start / +idle / peak) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.idle} | {args.labellers} | {args.pairs} | {len(lat)} | {len(stats['failures'])} | "
          f"{np.percentile(lat, 50):.0f} | {np.percentile(lat, 90):.0f} | {np.percentile(lat, 99):.0f} | "
          f"{lat.max():.0f} | {len(stats['acked']) / stats['wall_s']:.0f} | {base} / {with_idle} / "
          f"{stats['peak_threads']} |")
    ok = (not stats["failures"] and stats["finished"] and stored == sorted(stats["acked"])
          and progress["labelled"] == args.pairs)
    print(f"all {args.pairs} pairs labelled, store == acknowledged labels: {ok}; idle connections held to the end: "
          f"{held}; failures: {stats['failures'][:3]}")
    return 0 if ok else 1


def _get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
