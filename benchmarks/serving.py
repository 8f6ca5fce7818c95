"""The serving benchmark behind docs/results.md's serving figures: Triton + the FastAPI gateway, one run.

    python -m benchmarks.serving --student DIR --teacher DIR --data DIR --out benchmarks/results

Exports both model folders into a temporary Triton model repository (`ServingSettings()`:
max batch 32, preferred 8/16/32, queue delay 0, KIND_CPU; the teacher's instance at SCHED_IDLE
by default, see --teacher-cpu-priority), starts the bundled tritonserver
on free loopback ports (as `adaudit triton` does), and starts the gateway (uvicorn, one worker,
its own process, backend triton, a temporary SQLite decision log) once per traffic policy, one
at a time:

  teacher   primary teacher                      concurrency 1, 8, 32
  student   primary student, shadow fraction 0   overhead (batch 1), concurrency 1, 8, 32; then the shadow baseline
  shadow    primary student, shadow fraction 1   every ad mirrored to the teacher; concurrency 8 in rounds that
                                                 alternate with the baseline (--shadow-rounds), then concurrency 1

Load: real ads (image + copy) from DATA/test.jsonl, sent as JSON (`image_base64`) to
`POST /v1/audits` by asyncio + aiohttp (on this machine) with `c` requests in flight,
a bounded number of requests per point and a time cap per point. Triton's side comes from its
Prometheus endpoint, as deltas of its cumulative counters:

  average batch size = d nv_inference_count / d nv_inference_exec_count     (over each point)

Gateway overhead (goal < 3 ms): one request at a time (batch 1, concurrency 1); around each
request the benchmark reads Triton's metrics endpoint (outside the timed request), so each
request has its own Triton compute time: d nv_inference_compute_infer_duration_us (the request
was the only execution: d nv_inference_exec_count = 1). Overhead = p50 of the end-to-end latency
minus p50 of those compute times, over the same requests. The end-to-end time is taken by a
socket client that costs microseconds (SocketClient); each ad is also sent through aiohttp, in
alternating order, and that client's figure (about 0.6 ms more: aiohttp's own time) is reported
beside it. The gateway talks to Triton over `--triton-protocol` (http, the gateway's default, or
grpc); with `--compare-protocols` each overhead ad also goes, by a socket client, to a second
gateway on the other protocol, so the two are compared request by request in one run (files
serving-ENGINE-protocols.*: the third process between requests leaves colder caches, so that
run's absolute figures are above a plain run's). Triton's queue (the dynamic batcher waits up to the queue delay for company) and the
rest of its request time are outside "compute", so they count as overhead; both are reported
beside it.

Triton adds a batch's compute time to nv_inference_compute_infer_duration_us once per request in
the batch, so for batched points the compute per execution comes from Triton's statistics API
(/v2/models/<m>/stats, batch_stats), which counts each execution once and also gives the
executions per batch size. The gateway's own counters for the same window (backend calls and the ads in
them, adaudit_backend_batch_ads) are held against Triton's requests and inferences (goal: within 10%;
the last column of the points table), with the mean time of a call as each side sees it. CPU seconds of the load generator, the gateway and Triton (server and
model stubs) are read from /proc for every point. Results: OUT/serving-ENGINE.{json,md} (`--engine`:
onnxruntime, the default, or torch; OUT/serving-ENGINE-protocols.* with --compare-protocols), so runs
of both engines sit side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import asyncio
import base64
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import httptools
import numpy as np

from adaudit.export.repository import ServingSettings, export_model
from adaudit.export.server import TritonError, TritonServer
from adaudit.core.files import atomic_write_text
from adaudit.training.measure import machine
from adaudit.service.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"gateway_overhead_ms": 3.0, "student_batching_lift": 3.0, "shadow_p99_increase_pct": 10.0}
CONCURRENCIES = (1, 8, 32)
HOST = "127.0.0.1"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind((HOST, 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def ratio(numerator, denominator) -> float | None:
    return round(numerator / denominator, 3) if numerator is not None and denominator else None


def fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def percentile(values, q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 3) if len(values) else None


# --- the ads ------------------------------------------------------------------------------------
def load_ads(data: Path, limit: int) -> list[bytes]:
    """Request bodies for the first `limit` ads of DATA/test.jsonl (real images and copy), encoded once."""
    path = data / "test.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist")
    bodies = []
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            if not line.strip():
                continue
            ad = json.loads(line)
            image = (data / ad["image"]).read_bytes()
            bodies.append(json.dumps({"image_base64": base64.b64encode(image).decode(), "text": ad["text"],
                                      "ad_id": ad["id"]}, ensure_ascii=False).encode())
            if len(bodies) >= limit:
                break
    if not bodies:
        raise SystemExit(f"error: {path} has no ads")
    return bodies


# --- Prometheus text and Triton's counters ----------------------------------------------------
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        if match:
            samples.append((match[1], dict(LABEL.findall(match[2] or "")), float(match[3])))
    return samples


def metric(samples, name: str, **labels) -> float:
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items()))


def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.read().decode()


TRITON_COUNTERS = {
    "success": "nv_inference_request_success", "executions": "nv_inference_exec_count",
    "inferences": "nv_inference_count", "request_us": "nv_inference_request_duration_us",
    "queue_us": "nv_inference_queue_duration_us", "input_us": "nv_inference_compute_input_duration_us",
    "infer_us": "nv_inference_compute_infer_duration_us", "output_us": "nv_inference_compute_output_duration_us",
}


class TritonMetrics:
    """Triton's Prometheus counters plus its statistics API's executions per batch size."""

    def __init__(self, metrics_port: int, http_port: int):
        self.url = f"http://{HOST}:{metrics_port}/metrics"
        self.stats_url = f"http://{HOST}:{http_port}/v2/models/{{model}}/stats"

    def counters(self, model: str) -> dict[str, float]:
        samples = parse_metrics(fetch(self.url))
        return {key: metric(samples, name, model=model) for key, name in TRITON_COUNTERS.items()}

    def batches(self, model: str) -> dict[int, tuple[int, int]]:
        """{batch size: (executions, compute_infer ns)} from /v2/models/<model>/stats (cumulative)."""
        result: dict[int, tuple[int, int]] = {}
        for entry in json.loads(fetch(self.stats_url.format(model=model)))["model_stats"]:
            for batch in entry.get("batch_stats", []):
                infer = batch.get("compute_infer", {})
                count, ns = result.get(int(batch["batch_size"]), (0, 0))
                result[int(batch["batch_size"])] = (count + int(infer.get("count", 0)), ns + int(infer.get("ns", 0)))
        return result

    def snapshot(self, model: str) -> dict:
        return {**self.counters(model), "batches": self.batches(model)}

    @staticmethod
    def window(before: dict, after: dict) -> dict:
        """Triton's view of one measured point: deltas of its cumulative counters."""
        d = {key: after[key] - before[key] for key in TRITON_COUNTERS}
        executions, requests = max(d["executions"], 1), max(d["success"], 1)
        sizes = {size: (count - before["batches"].get(size, (0, 0))[0], ns - before["batches"].get(size, (0, 0))[1])
                 for size, (count, ns) in after["batches"].items()}
        sizes = {size: value for size, value in sorted(sizes.items()) if value[0] > 0}
        batch_executions = sum(count for count, _ in sizes.values())
        return {
            "requests": int(d["success"]), "executions": int(d["executions"]), "inferences": int(d["inferences"]),
            "average_batch": round(d["inferences"] / executions, 2),
            # per request: Triton adds a batch's durations once per request in it
            "queue_ms_per_request": round(d["queue_us"] / requests / 1000, 3),
            "compute_ms_per_request": round((d["input_us"] + d["infer_us"] + d["output_us"]) / requests / 1000, 3),
            "request_ms_per_request": round(d["request_us"] / requests / 1000, 3),
            # per execution: the statistics API counts each execution once
            "compute_infer_ms_per_execution": round(sum(ns for _, ns in sizes.values()) / max(batch_executions, 1)
                                                    / 1e6, 3),
            "executions_by_batch_size": {str(size): count for size, (count, _) in sizes.items()},
        }


# --- the gateway, one process per traffic policy --------------------------------------------
class GatewayProcess:
    def __init__(self, name: str, workdir: Path, triton_url: str, **settings):
        self.name, self.port = name, free_ports(1)[0]
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = workdir / f"gateway-{name}.log"
        self.environment = {k: v for k, v in os.environ.items() if not k.startswith("ADAUDIT_")}
        self.environment.update({
            "ADAUDIT_BACKEND": "triton", "ADAUDIT_TRITON_URL": triton_url,
            "ADAUDIT_DATABASE_URL": f"sqlite:///{workdir / f'decisions-{name}.db'}",
            "ADAUDIT_REQUEST_TIMEOUT_S": "30",
            **{f"ADAUDIT_{k.upper()}": str(v) for k, v in settings.items()}})
        self.settings = settings
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> "GatewayProcess":
        command = [sys.executable, "-m", "uvicorn", "adaudit.service.app:create_app", "--factory", "--host", HOST,
                   "--port", str(self.port), "--workers", "1", "--log-level", "warning", "--no-access-log"]
        with open(self.log_path, "ab") as output:
            self.process = subprocess.Popen(command, env=self.environment, stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True, cwd=str(self.log_path.parent))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway {self.name} exited with code {self.process.returncode}:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"gateway {self.name} was not ready after {timeout:.0f} s")

    def metrics(self) -> list[tuple[str, dict, float]]:
        return parse_metrics(fetch(f"{self.url}/metrics"))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


# --- CPU time ---------------------------------------------------------------------------------
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_of(session: int | None = None, pid: int | None = None) -> float:
    """CPU seconds (user + system) of one process, or of every process of a session (Triton and its stubs)."""
    total = 0.0
    paths = [Path(f"/proc/{pid}/stat")] if pid is not None else Path("/proc").glob("[0-9]*/stat")
    for path in paths:
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()  # from field 3 (state) on
        except (OSError, IndexError):
            continue
        if pid is None and int(fields[3]) != session:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS  # user nice system idle iowait irq softirq steal


class CpuClock:
    """CPU seconds spent by the load generator (this process), the gateway(s), Triton, and everything else."""

    def __init__(self, gateway_pid: int, triton_session: int, *more_gateway_pids: int):
        self.gateway_pids, self.triton_session = (gateway_pid, *more_gateway_pids), triton_session

    def read(self) -> dict[str, float]:
        return {"client": time.process_time(), "gateway": sum(cpu_of(pid=pid) for pid in self.gateway_pids),
                "triton": cpu_of(session=self.triton_session), "machine": machine_busy()}

    @staticmethod
    def used(before: dict, after: dict, wall: float) -> dict:
        cores = {f"{name}_cores": round((after[name] - before[name]) / wall, 2) for name in before}
        ours = cores["client_cores"] + cores["gateway_cores"] + cores["triton_cores"]
        cores["other_cores"] = round(max(cores.pop("machine_cores") - ours, 0.0), 2)  # other processes
        return cores


# --- load -----------------------------------------------------------------------------------
HEADERS = {"content-type": "application/json"}


def client_for(gateway: GatewayProcess, concurrency: int) -> "Client":
    return Client(gateway.url, concurrency)


class Client:
    """The load generator's HTTP client: aiohttp, one keep-alive connection per request in flight.

    aiohttp, not httpx: on this machine httpx spends about 1.1 ms of CPU per audit request and
    adds about 1.3 ms to each round trip, aiohttp about 0.3 ms; on two shared cores that cost is
    the client's, not the gateway's, and it starves the gateway at concurrency 32.
    """

    def __init__(self, url: str, concurrency: int):
        self.url, self.concurrency = url, concurrency

    async def __aenter__(self) -> "Client":
        self.session = aiohttp.ClientSession(
            self.url, connector=aiohttp.TCPConnector(limit=self.concurrency, force_close=False),
            timeout=aiohttp.ClientTimeout(total=120))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    async def get(self, path: str) -> "Answer":
        async with self.session.get(path) as answer:
            return Answer(answer.status, await answer.read())

    async def post(self, path: str, content: bytes, headers: dict) -> "Answer":
        async with self.session.post(path, data=content, headers=headers) as answer:
            return Answer(answer.status, await answer.read())


class Answer:
    def __init__(self, status_code: int, content: bytes):
        self.status_code, self.content = status_code, content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


async def load(client: Client, bodies: list[bytes], concurrency: int, requests: int,
               max_seconds: float) -> dict:
    """`requests` POST /v1/audits with `concurrency` in flight (none issued after `max_seconds`)."""
    latencies, server_total, server_inference, errors = [], [], [], []
    issued = 0
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker():
        nonlocal issued
        while issued < requests and time.perf_counter() < deadline:
            body = bodies[issued % len(bodies)]
            issued += 1
            sent = time.perf_counter()
            try:
                answer = await client.post("/v1/audits", content=body, headers=HEADERS)
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                errors.append(type(error).__name__)
                continue
            elapsed = time.perf_counter() - sent
            if answer.status_code != 200:
                errors.append(f"{answer.status_code} {answer.text[:200]}")
                continue
            latencies.append(elapsed * 1000)
            timings = answer.json()["timings"]
            server_total.append(timings["total_ms"])
            server_inference.append(timings["inference_ms"])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "concurrency": concurrency, "requests": len(latencies), "errors": len(errors),
        "first_errors": errors[:3], "wall_s": round(wall, 3),
        "p50_ms": percentile(latencies, 50), "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99), "mean_ms": round(float(np.mean(latencies)), 3) if latencies else None,
        "throughput_ads_per_s": round(len(latencies) / wall, 2),
        "gateway_total_p50_ms": percentile(server_total, 50),
        "gateway_inference_p50_ms": percentile(server_inference, 50),
    }


# --- the gateway's view against Triton's own ---------------------------------------------------
GATEWAY_COUNTERS = {"calls": "adaudit_backend_batch_ads_count", "ads": "adaudit_backend_batch_ads_sum",
                    "inference_s": "adaudit_inference_duration_seconds_sum",
                    "inferences": "adaudit_inference_duration_seconds_count"}
AGREEMENT_GOAL = 0.10  # the gateway's figures within 10% of Triton's statistics


def gateway_snapshot(gateway: "GatewayProcess", model: str) -> dict[str, float]:
    samples = gateway.metrics()
    return {key: metric(samples, name, model=model) for key, name in GATEWAY_COUNTERS.items()}


def agreement(gateway_before: dict, gateway_after: dict, triton_window: dict) -> dict:
    """The gateway's backend calls and ads over one point against Triton's requests and inferences (its
    counters): the gateway counts what it sent, Triton what it ran, so the two must agree. Beside them, the
    mean time the gateway waited for its answers against Triton's mean request time: the gateway's includes
    the wire, (de)serialisation and, under load, its own batching wait, so it is reported, not held to 10%."""
    calls = gateway_after["calls"] - gateway_before["calls"]
    ads = gateway_after["ads"] - gateway_before["ads"]
    pairs = {"calls": (calls, triton_window["requests"]), "ads": (ads, triton_window["inferences"])}
    differences = [abs(ours - theirs) / theirs if theirs else float(ours != theirs) for ours, theirs in pairs.values()]
    return {"gateway_calls": int(calls), "triton_requests": int(triton_window["requests"]),
            "gateway_ads": int(ads), "triton_inferences": int(triton_window["inferences"]),
            "largest_difference": round(max(differences), 4), "within_goal": max(differences) <= AGREEMENT_GOAL,
            "gateway_inference_mean_ms": round((gateway_after["inference_s"] - gateway_before["inference_s"]) * 1000
                                               / max(gateway_after["inferences"] - gateway_before["inferences"], 1), 3),
            "triton_request_mean_ms": triton_window["request_ms_per_request"]}


def agreement_cell(seen: dict | None) -> str:
    if not seen:
        return "-"
    return (f"{seen['gateway_calls']}/{seen['triton_requests']}, {seen['gateway_ads']}/{seen['triton_inferences']}, "
            f"{fmt(seen['gateway_inference_mean_ms'])}/{fmt(seen['triton_request_mean_ms'])}")


def measure(gateway: GatewayProcess, triton: TritonMetrics, clock: CpuClock, model: str, bodies: list[bytes],
            concurrency: int, requests: int, max_seconds: float, label: str, also: str | None = None) -> dict:
    """One point; `also`: another model whose Triton counters are read over the same window (the shadow)."""
    async def go():
        async with client_for(gateway, concurrency) as client:
            # open the connections first (not measured), so no point pays for TCP handshakes
            await asyncio.gather(*(client.get("/healthz") for _ in range(concurrency)))
            other = triton.snapshot(also) if also else None
            seen_before = gateway_snapshot(gateway, model)
            before, cpu_before = triton.snapshot(model), clock.read()
            result = await load(client, bodies, concurrency, requests, max_seconds)
            cpu_after, after = clock.read(), triton.snapshot(model)
            result["gateway_seen"] = (seen_before, gateway_snapshot(gateway, model))
            if also:
                result[f"triton_{also}"] = TritonMetrics.window(other, triton.snapshot(also))
        return result, before, after, cpu_before, cpu_after

    result, before, after, cpu_before, cpu_after = asyncio.run(go())
    result["cpu"] = CpuClock.used(cpu_before, cpu_after, result["wall_s"])
    result["triton"] = TritonMetrics.window(before, after)
    result["agreement"] = agreement(*result.pop("gateway_seen"), result["triton"])
    errors = f", {result['errors']} ERRORS {result['first_errors']}" if result["errors"] else ""
    log(f"  {label:<20} c={concurrency:<3} n={result['requests']:<4} p50 {result['p50_ms'] or 0:8.2f} ms  "
        f"p99 {result['p99_ms'] or 0:8.2f} ms  {result['throughput_ads_per_s']:7.1f} ads/s  "
        f"Triton batch {result['triton']['average_batch']:5.2f}, compute/exec "
        f"{result['triton']['compute_infer_ms_per_execution']:6.2f} ms; CPU cores: client "
        f"{result['cpu']['client_cores']:.2f}, gateway {result['cpu']['gateway_cores']:.2f}, Triton "
        f"{result['cpu']['triton_cores']:.2f}, other processes {result['cpu']['other_cores']:.2f}{errors}")
    return result


class SocketClient:
    """One keep-alive HTTP/1.1 connection on a blocking socket, responses parsed by httptools (the parser
    uvicorn uses): the instrument for the overhead figure. A request costs it a few microseconds, where
    aiohttp (the load generator's client) adds about 0.6 ms to each round trip on two cores and
    http.client about 0.3 ms: client time that would count as the gateway's overhead."""

    def __init__(self, host: str, port: int):
        self.host = f"{host}:{port}".encode()
        self.socket = socket.create_connection((host, port), timeout=60)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.body, self.complete = [], False
        self.parser = httptools.HttpResponseParser(self)

    def on_body(self, chunk: bytes) -> None:  # httptools callbacks
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.complete = True

    def request(self, method: str, path: str, content: bytes = b"", content_type: str = "application/json"):
        head = f"{method} {path} HTTP/1.1\r\nhost: ".encode() + self.host + b"\r\n"
        if content:
            head += f"content-type: {content_type}\r\ncontent-length: {len(content)}\r\n".encode()
        self.body, self.complete = [], False
        self.socket.sendall(head + b"\r\n" + content)
        while not self.complete:
            chunk = self.socket.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the gateway closed the connection")
            self.parser.feed_data(chunk)
        return Answer(self.parser.get_status_code(), b"".join(self.body))

    def close(self) -> None:
        self.socket.close()


def overhead(gateway: GatewayProcess, other: GatewayProcess | None, triton: TritonMetrics, clock: CpuClock, model: str,
             bodies: list[bytes],
             requests: int, max_seconds: float) -> dict:
    """One request at a time; Triton's counters read between requests give each request's own Triton times.

    Each ad is sent twice, by the socket client and by aiohttp, in alternating order: the overhead is
    the socket client's (the gateway's own), aiohttp's is reported beside it. With `other` (the same
    gateway on Triton's other protocol) each ad also goes there, by a socket client: the two protocols
    measured request by request in one run."""
    clients = ("socket", "aiohttp") + (("other",) if other is not None else ())
    e2e = {name: [] for name in clients}
    compute = {name: [] for name in clients}
    healthz = {name: [] for name in clients}
    queue, in_triton, gateway_total, gateway_inference, differences = [], [], [], [], []
    skipped, errors = 0, []

    def settled(previous: dict) -> dict:
        """Triton's counters once the last request is counted (they may land just after the response)."""
        deadline = time.monotonic() + 2.0
        while True:
            now = triton.counters(model)
            if now["success"] > previous["success"] and now["executions"] > previous["executions"] \
                    or time.monotonic() > deadline:
                return now
            time.sleep(0.0005)

    async def go():
        nonlocal skipped
        plain = SocketClient(HOST, gateway.port)
        sockets = {"socket": plain, **({"other": SocketClient(HOST, other.port)} if other is not None else {})}
        async with client_for(gateway, 1) as client:
            async def send(name: str, method: str, path: str, content: bytes = b"") -> tuple[Answer, float]:
                sent = time.perf_counter()
                if name in sockets:
                    answer = sockets[name].request(method, path, content)
                elif method == "GET":
                    answer = await client.get(path)
                else:
                    answer = await client.post(path, content=content, headers=HEADERS)
                return answer, (time.perf_counter() - sent) * 1000

            for index in range(min(requests, 100)):  # the HTTP floor: client, uvicorn and a route that does nothing
                for name in clients:
                    healthz[name].append((await send(name, "GET", "/healthz"))[1])
            previous = triton.counters(model)
            started = time.perf_counter()
            for index in range(requests):
                if time.perf_counter() - started > max_seconds:
                    break
                for name in clients if index % 2 == 0 else reversed(clients):
                    answer, elapsed = await send(name, "POST", "/v1/audits", bodies[index % len(bodies)])
                    if answer.status_code != 200:
                        errors.append(f"{answer.status_code} {answer.text[:200]}")
                        previous = triton.counters(model)
                        continue
                    now = settled(previous)
                    if now["executions"] - previous["executions"] != 1 or now["success"] - previous["success"] != 1:
                        skipped += 1  # not exactly this one request in one execution: no clean reading
                    else:
                        e2e[name].append(elapsed)
                        compute[name].append((now["infer_us"] - previous["infer_us"]) / 1000)
                        if name == "socket":
                            queue.append((now["queue_us"] - previous["queue_us"]) / 1000)
                            in_triton.append((now["request_us"] - previous["request_us"]) / 1000)
                            differences.append(elapsed - compute[name][-1])
                            timings = answer.json()["timings"]
                            gateway_total.append(timings["total_ms"])
                            gateway_inference.append(timings["inference_ms"])
                    previous = now
        for socket_client in sockets.values():
            socket_client.close()

    cpu_before, wall = clock.read(), time.perf_counter()
    asyncio.run(go())
    cpu = CpuClock.used(cpu_before, clock.read(), time.perf_counter() - wall)
    result = {
        "cpu": cpu, "requests": len(e2e["socket"]), "skipped": skipped, "errors": len(errors),
        "first_errors": errors[:3], "client": "socket (SocketClient)",
        "e2e_p50_ms": percentile(e2e["socket"], 50), "e2e_p99_ms": percentile(e2e["socket"], 99),
        "triton_compute_infer_p50_ms": percentile(compute["socket"], 50), "triton_compute_infer_mean_ms":
            round(float(np.mean(compute["socket"])), 3) if compute["socket"] else None,
        "triton_queue_p50_ms": percentile(queue, 50), "triton_request_p50_ms": percentile(in_triton, 50),
        "gateway_total_p50_ms": percentile(gateway_total, 50),
        "gateway_inference_p50_ms": percentile(gateway_inference, 50),
        "per_request_difference_p50_ms": percentile(differences, 50),
        "http_floor_p50_ms": percentile(healthz["socket"], 50),  # GET /healthz round trip, same client
        "aiohttp_requests": len(e2e["aiohttp"]),
        "aiohttp_e2e_p50_ms": percentile(e2e["aiohttp"], 50),
        "aiohttp_triton_compute_infer_p50_ms": percentile(compute["aiohttp"], 50),
        "aiohttp_http_floor_p50_ms": percentile(healthz["aiohttp"], 50),
    }
    if other is not None:
        result.update({"other_protocol": other.settings["triton_protocol"], "other_protocol_requests": len(e2e["other"]),
                       "other_protocol_e2e_p50_ms": percentile(e2e["other"], 50),
                       "other_protocol_triton_compute_infer_p50_ms": percentile(compute["other"], 50),
                       "other_protocol_http_floor_p50_ms": percentile(healthz["other"], 50)})
        if e2e["other"]:
            result["other_protocol_gateway_overhead_ms"] = round(
                result["other_protocol_e2e_p50_ms"] - result["other_protocol_triton_compute_infer_p50_ms"], 3)
    if e2e["socket"]:
        result["gateway_overhead_ms"] = round(result["e2e_p50_ms"] - result["triton_compute_infer_p50_ms"], 3)
        result["outside_triton_ms"] = round(result["e2e_p50_ms"] - result["triton_request_p50_ms"], 3)
    if e2e["aiohttp"]:
        result["aiohttp_gateway_overhead_ms"] = round(
            result["aiohttp_e2e_p50_ms"] - result["aiohttp_triton_compute_infer_p50_ms"], 3)
    log(f"  {'overhead':<20} c=1   n={len(e2e['socket']):<4} e2e p50 {fmt(result['e2e_p50_ms'])} ms - Triton compute "
        f"p50 {fmt(result['triton_compute_infer_p50_ms'])} ms = {fmt(result.get('gateway_overhead_ms'))} ms "
        f"(through aiohttp {fmt(result.get('aiohttp_gateway_overhead_ms'))} ms; the gateway on "
        f"{result.get('other_protocol', '-')} {fmt(result.get('other_protocol_gateway_overhead_ms'))} ms; Triton queue p50 "
        f"{fmt(result['triton_queue_p50_ms'])} ms, whole Triton request p50 {fmt(result['triton_request_p50_ms'])} ms, "
        f"GET /healthz p50 {fmt(result['http_floor_p50_ms'])} ms; {skipped} skipped, {len(errors)} errors; "
        f"other processes {cpu['other_cores']:.2f} cores)")
    return result


def warm(gateway: GatewayProcess, bodies: list[bytes], concurrency: int, requests: int) -> None:
    async def go():
        async with client_for(gateway, concurrency) as client:
            return await load(client, bodies, concurrency, requests, 120)

    result = asyncio.run(go())
    if result["errors"]:
        raise RuntimeError(f"warm-up on gateway {gateway.name} failed: {result['first_errors']}")





def describe_model(version_folder: Path, source: Path) -> dict:
    """What was served: the source folder, parameter count and the weights' sha256 (as exported)."""
    from safetensors import safe_open

    weights = version_folder / "model" / "model.safetensors"
    with safe_open(str(weights), "pt") as tensors:
        params = sum(int(np.prod(tensors.get_slice(key).get_shape())) for key in tensors.keys())
    checksums = json.loads((version_folder / "checksums.json").read_text())
    return {"folder": str(source), "params": params, "sha256": checksums.get("model/model.safetensors")}


def triton_version(http_port: int) -> str | None:
    try:
        return json.loads(fetch(f"http://{HOST}:{http_port}/v2"))["version"]
    except (OSError, KeyError, ValueError):
        return None


# --- report ---------------------------------------------------------------------------------
def lift_ceiling(busy: dict, alone: dict, cores: int) -> float | None:
    """The most the concurrency-32 / concurrency-1 throughput ratio could be on this machine if every core
    were busy: client, gateway and Triton share the cores, so at most `cores` / (their CPU seconds per ad
    at concurrency 32) ads per second, over concurrency 1's throughput."""
    c = busy["cpu"]
    seconds_per_ad = (c["client_cores"] + c["gateway_cores"] + c["triton_cores"]) / busy["throughput_ads_per_s"]
    return ratio(cores / seconds_per_ad, alone["throughput_ads_per_s"]) if seconds_per_ad > 0 else None


def markdown(summary: dict) -> str:
    a, m, g, mc = summary["achieved"], summary["met"], summary["goals"], summary["machine"]
    sv = summary["serving"]
    threads = f"{sv['triton_omp_num_threads']} (OMP_NUM_THREADS)" if sv["triton_omp_num_threads"] else \
        "torch's default (no OMP_NUM_THREADS)"
    yes = {True: "yes", False: "**no**"}
    lines = [
        "# Serving benchmark", "",
        f"`{summary['command']}`", ""]
    if summary["disturbed"]:
        lines += [f"**Disturbed:** other processes used up to {summary['other_processes_max_cores']:.2f} cores "
                  "during a measured point (last column): these figures are not a quiet-machine measurement.", ""]
    lines += [
        f"Student `{summary['student']}` ({summary['models']['student']['params'] / 1e6:.2f}M parameters), teacher "
        f"`{summary['teacher']}` ({summary['models']['teacher']['params'] / 1e6:.2f}M). {mc['cpu']}, "
        f"{mc['cores']} cores, torch {mc['torch']}, Triton {summary['triton_version']} (bundled by nvidia-pytriton, "
        f"CPU, python backend, models on {sv.get('engine', 'torch')}), {summary['started_utc']} UTC, load average at start {mc['load_average_at_start'][0]}, "
        f"{summary['wall_seconds']:.0f} s. Triton: max batch {sv['max_batch_size']}, preferred "
        f"{sv['preferred_batch_sizes']}, queue delay {sv['max_queue_delay_microseconds']} us, one CPU instance per "
        f"model, torch threads per model stub: {threads}, the teacher's stub at CPU priority "
        f"{summary.get('teacher_cpu_priority', 'normal')} (student: normal). "
        f"Gateway: one uvicorn worker, Triton's {summary.get('triton_protocol', 'grpc')} protocol, gateway-side "
        f"batching (coalescing.py), SQLite decision log. Load: "
        f"{summary['distinct_ads']} real ads from `{summary['data']}/test.jsonl`, JSON with `image_base64`, "
        f"asyncio + aiohttp on the same machine.", "",
        "| goal | target | achieved | met |", "| --- | --- | --- | --- |",
        f"| gateway overhead at batch 1: e2e p50 - Triton compute p50 | < {fmt(g['gateway_overhead_ms'], 'g')} ms | "
        f"{fmt(a['gateway_overhead_ms'])} ms | {yes[m['gateway_overhead_ms']]} |",
        f"| student throughput, concurrency 32 / concurrency 1 | >= {fmt(g['student_batching_lift'], 'g')}x | "
        f"{fmt(a['student_batching_lift'])}x (Triton batch {fmt(a['student_average_batch_c32'], '.1f')}; "
        f"with every core busy at most {fmt(a.get('student_lift_cpu_ceiling'), '.2f')}x on this machine) | "
        f"{yes[m['student_batching_lift']]} |",
        f"| shadow 1.0 vs 0.0: primary p99 at concurrency 8 | < +{fmt(g['shadow_p99_increase_pct'], 'g')}% | "
        f"{fmt(a['shadow_p99_increase_pct'], '+.1f')}% | {yes[m['shadow_p99_increase_pct']]} |",
        f"| the gateway's backend calls and ads per point vs Triton's requests and inferences | within "
        f"{AGREEMENT_GOAL:.0%} | largest difference {a['gateway_triton_largest_difference']:.1%} over "
        f"{len(summary['points'])} points | {yes[m['gateway_triton_agreement']]} |",
        f"| (beside it) the same at concurrency 1, the teacher busy with a full queue | | "
        f"{fmt(a.get('shadow_p99_increase_pct_c1'), '+.1f')}% | |", "",
        "| primary | shadow | concurrency | requests | p50 ms | p99 ms | ads/s | Triton avg batch | "
        "Triton compute / execution ms | CPU cores: client / gateway / Triton / other processes | "
        "gateway / Triton: calls, ads, mean call ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for point in summary["points"]:
        t, c = point["triton"], point["cpu"]
        lines.append(f"| {point['primary']} | {point['shadow_fraction']:g} | {point['concurrency']} | "
                     f"{point['requests']} | {fmt(point['p50_ms'])} | {fmt(point['p99_ms'])} | "
                     f"{fmt(point['throughput_ads_per_s'], '.1f')} | {fmt(t['average_batch'])} | "
                     f"{fmt(t['compute_infer_ms_per_execution'])} | {fmt(c['client_cores'])} / "
                     f"{fmt(c['gateway_cores'])} / {fmt(c['triton_cores'])} / {fmt(c['other_cores'])} | "
                     f"{agreement_cell(point.get('agreement'))} |")
    o = summary["overhead"]
    lines += ["", f"Gateway overhead, student, batch 1, one request at a time ({o['requests']} requests; p50 of each). "
              "Each ad is sent twice, in alternating order: by a socket client that adds microseconds (the overhead "
              "figure) and by aiohttp, the load generator's client (row aiohttp); with `--compare-protocols`, also by a socket "
              "client to the same gateway on Triton's other protocol (the last row):",
              "", "| client | end to end | GET /healthz (HTTP floor) | in the gateway (server-side total) | "
              "gateway's Triton call | Triton request | Triton queue | Triton compute | overhead |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
              f"| socket | {fmt(o['e2e_p50_ms'])} | {fmt(o['http_floor_p50_ms'])} | {fmt(o['gateway_total_p50_ms'])} | "
              f"{fmt(o['gateway_inference_p50_ms'])} | "
              f"{fmt(o['triton_request_p50_ms'])} | {fmt(o['triton_queue_p50_ms'])} | "
              f"{fmt(o['triton_compute_infer_p50_ms'])} | {fmt(o['gateway_overhead_ms'])} |"]
    if o.get("aiohttp_e2e_p50_ms") is not None:
        lines += [f"| aiohttp | {fmt(o['aiohttp_e2e_p50_ms'])} | {fmt(o['aiohttp_http_floor_p50_ms'])} | | | | | "
                  f"{fmt(o['aiohttp_triton_compute_infer_p50_ms'])} | {fmt(o.get('aiohttp_gateway_overhead_ms'))} |"]
    if o.get("other_protocol_e2e_p50_ms") is not None:
        lines += [f"| socket, the gateway on Triton's {o['other_protocol']} | {fmt(o['other_protocol_e2e_p50_ms'])} | "
                  f"{fmt(o['other_protocol_http_floor_p50_ms'])} | | | | | "
                  f"{fmt(o['other_protocol_triton_compute_infer_p50_ms'])} | "
                  f"{fmt(o.get('other_protocol_gateway_overhead_ms'))} |"]
    s = summary["shadow"]
    pairs = ", ".join(f"{fmt(off)} -> {fmt(on)}" for off, on in s["p99_pairs_ms"])
    lines += ["", f"Shadow 1.0 (teacher; the gateway's shadow_batch {s['batch']}, shadow_busy_fraction "
              f"{s['busy_fraction']:g}), concurrency 8, {s['rounds']} alternating rounds of shadow off and on "
              f"(medians): {fmt(s['comparisons'], '.0f')} mirrored ads compared, {fmt(s['dropped'], '.0f')} "
              f"dropped (queue full), {fmt(s['shadow_failed'], '.0f')} shadow failures; primary p50 "
              f"{fmt(s['p50_off_ms'])} -> {fmt(s['p50_on_ms'])} ms, p99 {fmt(s['p99_off_ms'])} -> "
              f"{fmt(s['p99_on_ms'])} ms (each round: {pairs}), {fmt(s['throughput_off'], '.1f')} -> "
              f"{fmt(s['throughput_on'], '.1f')} ads/s.", ""]
    if "c1" in s:
        lines += [f"At concurrency 1 (after the concurrency-8 point, the queue full): primary p50 "
                  f"{fmt(s['c1']['p50_off_ms'])} -> {fmt(s['c1']['p50_on_ms'])} ms, p99 {fmt(s['c1']['p99_off_ms'])} "
                  f"-> {fmt(s['c1']['p99_on_ms'])} ms.", ""]
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    started_utc = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    for folder in (args.student, args.teacher):
        if not (folder / "config.json").is_file():
            raise SystemExit(f"error: {folder} is not a model folder (no config.json)")
    bodies = load_ads(args.data, args.ads)
    log(f"{len(bodies)} ads from {args.data / 'test.jsonl'}; load average {load_at_start}")
    workdir = Path(tempfile.mkdtemp(prefix="adaudit-serving-bench-"))
    triton = None
    gateways: list[GatewayProcess] = []  # every gateway started, stopped at the end whatever happens
    points: list[dict] = []
    try:
        serving = ServingSettings(max_queue_delay_microseconds=args.queue_delay_us, engine=args.engine)
        repository = workdir / "repository"
        models = {}
        for name, folder in (("student", args.student), ("teacher", args.teacher)):
            chosen = dataclasses.replace(serving, cpu_priority=args.teacher_cpu_priority) if name == "teacher" \
                else serving
            models[name] = describe_model(export_model(folder, repository, name, 1, chosen), folder)
        log("exported " + ", ".join(f"{name} ({m['params'] / 1e6:.2f}M parameters, sha256 {m['sha256'][:12]})"
                                    for name, m in models.items()))
        http, grpc, metrics_port = free_ports(3)
        log(f"starting tritonserver (HTTP {http}, gRPC {grpc}, metrics {metrics_port})")
        triton = TritonServer(repository, http, grpc, metrics_port, log_file=workdir / "triton.log", ready_timeout=300)
        saved = os.environ.get("OMP_NUM_THREADS")
        if args.triton_threads:  # torch's threads in each python-backend stub (default: torch's own choice)
            os.environ["OMP_NUM_THREADS"] = str(args.triton_threads)
        try:
            triton.start()
        except TritonError as error:
            text = (workdir / "triton.log").read_text(errors="replace") if (workdir / "triton.log").exists() else ""
            raise RuntimeError(f"{error}\n{text[-3000:]}") from None
        finally:
            if args.triton_threads:
                os.environ.pop("OMP_NUM_THREADS", None) if saved is None else os.environ.update(OMP_NUM_THREADS=saved)
        version = triton_version(http)
        log(f"Triton {version} ready after {time.monotonic() - started:.0f} s")
        tm = TritonMetrics(metrics_port, http)
        n = {1: args.requests_c1, 8: args.requests_c8, 32: args.requests_c32}
        teacher_n = {c: max(1, int(round(k * args.teacher_scale))) for c, k in n.items()}

        def launch(name: str, protocol: str = args.triton_protocol, **settings) -> GatewayProcess:
            gateways.append(GatewayProcess(name, workdir, triton.url_for(protocol), model_repository=repository,
                                           triton_protocol=protocol, **settings))
            return gateways[-1].start()

        def point(gateway: GatewayProcess, model: str, shadow: float, label: str, concurrency: int, requests: int,
                  also=None) -> dict:
            clock = CpuClock(gateway.process.pid, triton.process.pid)
            result = measure(gateway, tm, clock, model, bodies, concurrency, requests, args.max_seconds, label, also)
            result.update({"primary": model, "shadow_fraction": shadow, "label": label})
            points.append(result)
            return result

        # 1. the teacher as primary
        log("gateway: primary teacher, no shadow")
        gateway = launch("teacher", primary_model="teacher", shadow_fraction=0.0)
        warm(gateway, bodies, 1, args.warmup)
        warm(gateway, bodies, 32, 64)
        teacher = {c: point(gateway, "teacher", 0.0, "teacher", c, teacher_n[c]) for c in CONCURRENCIES}
        gateway.stop()

        # 2. the student as primary: overhead, throughput, and the shadow baseline
        log("gateway: primary student, shadow fraction 0")
        gateway = launch("student", primary_model="student", shadow_model="teacher", shadow_fraction=0.0)
        warm(gateway, bodies, 1, args.warmup)
        warm(gateway, bodies, 32, 64)
        other = None
        if args.compare_protocols:  # the same gateway on Triton's other protocol, for the overhead point only
            protocol = "grpc" if args.triton_protocol == "http" else "http"
            other = launch("student-" + protocol, protocol, primary_model="student", shadow_model="teacher",
                           shadow_fraction=0.0)
            warm(other, bodies, 1, args.warmup)
        clock = CpuClock(gateway.process.pid, triton.process.pid, *([other.process.pid] if other else []))
        overhead_figures = overhead(gateway, other, tm, clock, "student", bodies, args.requests_overhead,
                                    args.max_seconds)
        if other is not None:
            other.stop()
        student = {c: point(gateway, "student", 0.0, "student", c, n[c]) for c in CONCURRENCIES}
        # 3. shadow 1.0: every ad mirrored to the teacher. Both gateways stay up and are measured in
        # alternating rounds (off, on, off, on, ...), so a drift of the machine's speed hits both alike;
        # before each shadow-off point the teacher's queue is drained and the teacher idle.
        log(f"gateway: primary student, shadow fraction 1.0 (teacher, batch {args.shadow_batch}, busy fraction "
            f"{args.shadow_busy_fraction:g}), beside the shadow-off gateway; {args.shadow_rounds} alternating rounds")
        off_gateway = gateway
        on_gateway = launch("shadow", primary_model="student", shadow_model="teacher", shadow_fraction=1.0,
                            shadow_batch=args.shadow_batch, shadow_busy_fraction=args.shadow_busy_fraction)
        warm(on_gateway, bodies, 8, 32)

        def teacher_idle() -> None:
            """Until the shadow queue is empty and the teacher has answered nothing for a second (at most 90 s)."""
            deadline = time.monotonic() + 90
            last = None
            while time.monotonic() < deadline:
                done = (metric(on_gateway.metrics(), "adaudit_shadow_queue_depth"), tm.counters("teacher")["success"])
                if done[0] == 0 and done == last:
                    return
                last = done
                time.sleep(1.0)

        rounds_off, rounds_on, moved_on = [], [], {}
        for _ in range(args.shadow_rounds):
            teacher_idle()
            rounds_off.append(point(off_gateway, "student", 0.0, "student, shadow 0.0", 8, args.requests_shadow))
            before = on_gateway.metrics()
            rounds_on.append(point(on_gateway, "student", 1.0, "student, shadow 1.0", 8, args.requests_shadow,
                                   also="teacher"))
            after = on_gateway.metrics()
            for name, labels in (("adaudit_shadow_comparisons_total", {}), ("adaudit_shadow_dropped_total", {}),
                                 ("adaudit_errors_total", {"kind": "shadow_failed"})):
                moved_on[name] = moved_on.get(name, 0.0) + metric(after, name, **labels) - metric(before, name, **labels)
        # one request at a time while the teacher works through the full queue: no queueing in the primary,
        # so what moves is what the teacher's work costs each answer
        shadow_on_c1 = point(on_gateway, "student", 1.0, "student, shadow 1.0", 1, args.requests_c1, also="teacher")
        teacher_idle()
        shadow_off_c1 = point(off_gateway, "student", 0.0, "student, shadow 0.0", 1, args.requests_c1)
        on_gateway.stop()
        off_gateway.stop()

        def median_of(rounds: list[dict], key: str) -> float | None:
            values = [r[key] for r in rounds if r[key] is not None]
            return round(float(np.median(values)), 3) if values else None

        shadow = {"rounds": args.shadow_rounds, "batch": args.shadow_batch, "busy_fraction": args.shadow_busy_fraction,
                  "p50_off_ms": median_of(rounds_off, "p50_ms"), "p50_on_ms": median_of(rounds_on, "p50_ms"),
                  "p99_off_ms": median_of(rounds_off, "p99_ms"), "p99_on_ms": median_of(rounds_on, "p99_ms"),
                  "p99_pairs_ms": [[off["p99_ms"], on["p99_ms"]] for off, on in zip(rounds_off, rounds_on)],
                  "throughput_off": median_of(rounds_off, "throughput_ads_per_s"),
                  "throughput_on": median_of(rounds_on, "throughput_ads_per_s"),
                  "comparisons": moved_on["adaudit_shadow_comparisons_total"],
                  "dropped": moved_on["adaudit_shadow_dropped_total"],
                  "shadow_failed": moved_on["adaudit_errors_total"],
                  "teacher_in_triton_during_point": rounds_on[-1]["triton_teacher"],
                  "c1": {"p50_off_ms": shadow_off_c1["p50_ms"], "p50_on_ms": shadow_on_c1["p50_ms"],
                         "p99_off_ms": shadow_off_c1["p99_ms"], "p99_on_ms": shadow_on_c1["p99_ms"],
                         "teacher_in_triton_during_point": shadow_on_c1["triton_teacher"]}}
        busiest = max([p["cpu"]["other_cores"] for p in points] + [overhead_figures["cpu"]["other_cores"]])
        if busiest > args.other_limit:
            log(f"WARNING: other processes used up to {busiest:.2f} cores during a point: figures disturbed")
        shadow_ratio = ratio(shadow["p99_on_ms"], shadow["p99_off_ms"])
        achieved = {
            "gateway_overhead_ms": overhead_figures.get("gateway_overhead_ms"),
            "student_batching_lift": ratio(student[32]["throughput_ads_per_s"], student[1]["throughput_ads_per_s"]),
            "student_average_batch_c32": student[32]["triton"]["average_batch"],
            "student_lift_cpu_ceiling": lift_ceiling(student[32], student[1], os.cpu_count() or 1),
            "teacher_batching_lift": ratio(teacher[32]["throughput_ads_per_s"], teacher[1]["throughput_ads_per_s"]),
            "teacher_average_batch_c32": teacher[32]["triton"]["average_batch"],
            "student_over_teacher_throughput_c32": ratio(student[32]["throughput_ads_per_s"],
                                                         teacher[32]["throughput_ads_per_s"]),
            "teacher_over_student_p50_c1": ratio(teacher[1]["p50_ms"], student[1]["p50_ms"]),
            "shadow_p99_increase_pct": round(100 * (shadow_ratio - 1), 2) if shadow_ratio is not None else None,
            "shadow_p99_increase_pct_c1": round(100 * (ratio(shadow_on_c1["p99_ms"], shadow_off_c1["p99_ms"]) - 1), 2)
            if shadow_on_c1["p99_ms"] and shadow_off_c1["p99_ms"] else None,
            "gateway_triton_largest_difference": max(p["agreement"]["largest_difference"] for p in points),
        }
        met = {"gateway_overhead_ms": achieved["gateway_overhead_ms"] is not None
               and achieved["gateway_overhead_ms"] < GOALS["gateway_overhead_ms"],
               "student_batching_lift": achieved["student_batching_lift"] is not None
               and achieved["student_batching_lift"] >= GOALS["student_batching_lift"],
               "shadow_p99_increase_pct": achieved["shadow_p99_increase_pct"] is not None
               and achieved["shadow_p99_increase_pct"] < GOALS["shadow_p99_increase_pct"],
               "gateway_triton_agreement": achieved["gateway_triton_largest_difference"] <= AGREEMENT_GOAL}
        return {
            "command": args.command, "started_utc": started_utc, "wall_seconds": round(time.monotonic() - started, 1),
            "machine": {**machine(), "load_average_at_start": load_at_start,
                        "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}, "triton_version": version,
            "teacher_cpu_priority": args.teacher_cpu_priority, "triton_protocol": args.triton_protocol,
            "serving": {**serving.__dict__, "triton_omp_num_threads": args.triton_threads},
            "student": str(args.student), "teacher": str(args.teacher), "data": str(args.data), "models": models,
            "distinct_ads": len(bodies),
            "load": {"client": "asyncio + aiohttp, one keep-alive connection per request in flight",
                     "requests": {"overhead": args.requests_overhead, "student": n, "teacher": teacher_n,
                                  "shadow": args.requests_shadow},
                     "max_seconds_per_point": args.max_seconds, "warmup_requests": args.warmup},
            "definitions": {
                "gateway_overhead_ms": "p50 of the end-to-end latency of POST /v1/audits (JSON, "
                                       "image_base64) as the socket client sees it (SocketClient: a blocking "
                                       "socket and httptools, microseconds per request), batch 1, one request "
                                       "at a time, minus p50 of Triton's compute for the same requests: per "
                                       "request, the delta of nv_inference_compute_infer_duration_us read from "
                                       "Triton's metrics "
                                       "endpoint before and after it (its execution was the only one: "
                                       "d nv_inference_exec_count = 1)",
                "average_batch": "d nv_inference_count / d nv_inference_exec_count over the point",
                "per_request": "d <duration>_us / d nv_inference_request_success over the point (Triton adds a "
                               "batch's durations once per request in it)",
                "compute_infer_ms_per_execution": "statistics API (/v2/models/<m>/stats) batch_stats deltas: "
                                                  "compute_infer ns / executions, each execution counted once",
                "cpu": "CPU seconds / wall seconds of the point, from /proc: client = this process, gateway = "
                       "the uvicorn process, Triton = tritonserver and its python-backend stubs, other = the rest of "
                       "the machine's busy time (/proc/stat): the run is marked disturbed above --other-limit",
            },
            "other_processes_max_cores": busiest, "disturbed": busiest > args.other_limit,
            "goals": GOALS, "achieved": achieved, "met": met, "overhead": overhead_figures, "shadow": shadow,
            "points": points,
        }
    finally:
        for gateway in gateways:  # stop() does nothing to a gateway already stopped
            gateway.stop()
        if triton is not None:
            log("stopping tritonserver")
            triton.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serving benchmark: Triton + the audit gateway, student vs "
                                                 "teacher, dynamic batching and shadow traffic, in one run.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--student", type=Path, required=True, help="student model folder")
    parser.add_argument("--teacher", type=Path, required=True, help="teacher model folder")
    parser.add_argument("--data", type=Path, required=True, help="data folder with test.jsonl and its images")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--ads", type=int, default=128, help="distinct ads to cycle through")
    parser.add_argument("--requests-overhead", type=int, default=200, help="requests for the overhead figure")
    parser.add_argument("--requests-c1", type=int, default=600, help="student requests at concurrency 1")
    parser.add_argument("--requests-c8", type=int, default=1500, help="student requests at concurrency 8")
    parser.add_argument("--requests-c32", type=int, default=2500, help="student requests at concurrency 32")
    parser.add_argument("--teacher-scale", type=float, default=0.5, help="teacher request counts, as a fraction")
    parser.add_argument("--requests-shadow", type=int, default=1500, help="requests per shadow point (concurrency 8)")
    parser.add_argument("--shadow-rounds", type=int, default=3, help="alternating shadow-off / shadow-on rounds")
    parser.add_argument("--shadow-batch", type=int, default=GatewaySettings.model_fields["shadow_batch"].default,
                        help="the gateway's shadow_batch: mirrored ads per teacher call")
    parser.add_argument("--shadow-busy-fraction", type=float,
                        default=GatewaySettings.model_fields["shadow_busy_fraction"].default,
                        help="the gateway's shadow_busy_fraction: the share of time the teacher may be kept busy")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up requests at concurrency 1 per gateway")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time cap per point")
    parser.add_argument("--queue-delay-us", type=int, default=ServingSettings().max_queue_delay_microseconds,
                        help="Triton's max_queue_delay_microseconds for both models")
    parser.add_argument("--teacher-cpu-priority", choices=("normal", "idle"), default="idle",
                        help="the teacher's model process: idle = SCHED_IDLE (it shadows the student on these CPUs)")
    parser.add_argument("--engine", choices=("torch", "onnxruntime"), default=ServingSettings().engine,
                        help="what runs both models inside Triton: eager PyTorch or ONNX Runtime (model.onnx)")
    parser.add_argument("--triton-protocol", choices=("http", "grpc"),
                        default=GatewaySettings.model_fields["triton_protocol"].default,
                        help="how the gateway talks to Triton (the gateway's triton_protocol setting)")
    parser.add_argument("--compare-protocols", action="store_true",
                        help="the overhead point also through a gateway on Triton's other protocol, alternating")
    parser.add_argument("--triton-threads", type=int, default=None,
                        help="OMP_NUM_THREADS for Triton's model stubs (default: unset, torch's own choice)")
    parser.add_argument("--other-limit", type=float, default=0.15,
                        help="CPU cores other processes may use during a point before the run is marked disturbed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, repository)")
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "-m", "benchmarks.serving", *(sys.argv[1:] if argv is None else argv)])

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        summary = run(args)
    except KeyboardInterrupt:
        log("interrupted: the gateway and Triton are stopped, nothing written")
        sys.exit(130)
    except (RuntimeError, TritonError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    args.out.mkdir(parents=True, exist_ok=True)
    # a run that also sends every overhead ad to the other protocol's gateway has its own files: the third
    # process between requests leaves colder caches, so its absolute figures are not the deployed gateway's
    stem = f"serving-{args.engine}" + ("-protocols" if args.compare_protocols else "")
    atomic_write_text(args.out / f"{stem}.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(args.out / f"{stem}.md", markdown(summary))
    a, m = summary["achieved"], summary["met"]
    log(f"gateway overhead {fmt(a['gateway_overhead_ms'])} ms (goal < 3 ms: {m['gateway_overhead_ms']}); "
        f"student c32/c1 throughput {fmt(a['student_batching_lift'])}x at Triton batch "
        f"{fmt(a['student_average_batch_c32'], '.1f')} (goal >= 3x: {m['student_batching_lift']}); "
        f"shadow p99 {fmt(a['shadow_p99_increase_pct'], '+.1f')}% (goal < 10%: {m['shadow_p99_increase_pct']})")
    if summary["disturbed"]:
        log(f"WARNING: disturbed by other processes (up to {summary['other_processes_max_cores']:.2f} cores)")
    log(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')} in {summary['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
