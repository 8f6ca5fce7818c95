"""The reliability benchmark behind docs/results.md's reliability figures: the gateway + a real Triton under load and faults.

    flock /tmp/adaudit-cpu.lock python -m benchmarks.reliability --student runs/bench/student \\
        --teacher runs/bench/teacher --data runs/bench/data --out benchmarks/results

Exports the student and the teacher into a temporary Triton model repository (one torch thread
per model instance), starts the bundled tritonserver on free loopback ports and the gateway
(uvicorn, its own process, API keys on, `max_in_flight` from `--max-in-flight`, a SQLite
decision log). Load comes from locust (benchmarks/locust_audits.py, headless, its own process)
posting real test ads; every request is recorded (start, latency, status, request id), so the
figures below are computed here from the records, accepted requests apart from shed ones.
Phases, one after another, on one gateway unless said otherwise:

  unloaded     1 user, closed loop                      -> the unloaded p50 / p99
  saturation   max_in_flight users, closed loop         -> the saturation rate X (accepted / s)
  steady       0.8 X offered as Poisson arrivals (an open loop while answers are faster than the gaps), --seconds
  overload     1.5 X offered, same, --seconds           -> p99 of accepted vs unloaded, shed rate
  shadow       0.5 X: shadow off (this gateway), shadow to a teacher Triton does not serve
               (teacher down: another gateway), shadow to the real teacher (slow: a third gateway)
  triton kill  0.4 X; Triton and its model processes SIGKILLed, restarted on the same ports:
               503s within the request timeout, /readyz, recovery time after Triton is ready
  sigterm      0.5 X; SIGTERM to the gateway mid-load: requests in flight must finish

With --replicas, one phase instead, the production topology on one machine: two gateways writing one
decision log on a throwaway PostgreSQL cluster (benchmarks/postgres.py, schema by `adaudit db upgrade`'s
code), each spreading its Triton calls over two tritonservers (`triton_url` names both); two locust
processes load the two gateways at once, one tritonserver is SIGKILLed and restarted mid-phase, and
afterwards feedback for ads one gateway answered is sent through the other. Results:
OUT/reliability-replicas.{json,md}.

Gateway memory (VmRSS) is sampled every second. At the end every accepted request id is looked
up in the decision log: lost = accepted without a row, extra = rows whose answer the client
never got, doubled = a request id answered twice. The machine has two cores: locust, the gateway
and Triton share them, so the saturation rate is that of the whole loopback system.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from adaudit.export.repository import ServingSettings, export_model
from adaudit.export.server import TritonError, TritonServer
from adaudit.core.files import atomic_write_text
from adaudit.training.measure import machine
from adaudit.service.security import digest
from benchmarks.serving import GatewayProcess, cpu_of, free_ports, load_ads, log, machine_busy

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).with_name("locust_audits.py")
GOALS = {"lost_or_doubled": 0, "recovery_s": 10.0, "overload_p99_over_unloaded_p99": 3.0}
KEY = "reliability-benchmark-key"
SHED = ("overloaded", "rate_limited")


def ms(values, q) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if len(values) else None


# --- load -------------------------------------------------------------------------------------
class Load:
    """One locust run in the background; `records()` once it has finished."""

    def __init__(self, url: str, workdir: Path, name: str, users: int, rate_per_user: float, seconds: float):
        self.records_file = workdir / f"records-{name}.jsonl"
        env = {**os.environ, "LOAD_BODIES": str(workdir / "bodies.jsonl"), "LOAD_RATE": f"{rate_per_user:.6f}",
               "LOAD_KEY": KEY, "LOAD_RECORDS": str(self.records_file)}
        command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r",
                   str(users), "-t", f"{seconds:.0f}s", "--host", url, "--only-summary", "--stop-timeout", "60",
                   "--exit-code-on-error", "0", "--loglevel", "WARNING"]
        self.log = open(workdir / f"locust-{name}.log", "wb")
        self.started = time.time()
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def records(self) -> list[list]:
        code = self.process.wait()
        self.log.close()
        if code != 0 or not self.records_file.exists():
            raise RuntimeError(f"locust exited with {code}; see {self.log.name}")
        return [json.loads(line) for line in self.records_file.read_text().splitlines()]


def run_load(url, workdir, name, users, rate_per_user, seconds) -> list[list]:
    return Load(url, workdir, name, users, rate_per_user, seconds).records()


def figures(records: list[list], skip_s: float = 3.0) -> dict:
    """Latency of accepted requests, rates, and what was refused, over the records after `skip_s` (the ramp)."""
    if not records:
        return {"requests": 0}
    first = min(r[0] for r in records) + skip_s
    last = max(r[0] for r in records)
    window = [r for r in records if first <= r[0] <= last]
    seconds = max(last - first, 1e-9)
    accepted = [r[1] for r in window if r[2] == 200]
    refused = {}
    for r in window:
        if r[2] != 200:
            key = f"{r[2]} {r[3]}"
            refused[key] = refused.get(key, 0) + 1
    shed = [r[1] for r in window if r[3] in SHED]
    errors = sum(n for kind, n in refused.items() if not kind.endswith(SHED))
    return {"requests": len(window), "seconds": round(seconds, 1), "offered_per_s": round(len(window) / seconds, 1),
            "accepted_per_s": round(len(accepted) / seconds, 1), "p50_ms": ms(accepted, 50), "p99_ms": ms(accepted, 99),
            "max_ms": ms(accepted, 100), "shed_fraction": round(len(shed) / len(window), 4),
            "shed_p99_ms": ms(shed, 99), "error_rate": round(errors / len(window), 4), "refused": refused}


class Sampler:
    """Every `every` seconds: the gateway's VmRSS (MB), and /readyz (when asked)."""

    def __init__(self, pid: int, url: str | None = None, every: float = 1.0):
        self.pid, self.url, self.every = pid, url, every
        self.rss: list[tuple[float, float]] = []
        self.ready: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            now = time.time()
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.rss.append((round(now, 2), round(int(line.split()[1]) / 1024, 1)))
            except OSError:
                pass
            if self.url:
                try:
                    self.ready.append((now, httpx.get(f"{self.url}/readyz", timeout=5).status_code))
                except httpx.HTTPError:
                    self.ready.append((now, 0))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def memory(samples: list[tuple[float, float]]) -> dict:
    values = [mb for _, mb in samples]
    return {"start_mb": values[0], "max_mb": max(values), "end_mb": values[-1], "samples": len(values)} \
        if values else {}


# --- phases -----------------------------------------------------------------------------------
def triton_kill(triton: TritonServer, gateway: GatewayProcess, workdir: Path, rate: float, seconds: float,
                kill_after: float, timeout_s: float) -> tuple[dict, list]:
    load = Load(gateway.url, workdir, "triton-kill", 50, rate / 50, seconds)
    with Sampler(gateway.process.pid, gateway.url, every=0.05) as sampler:
        time.sleep(kill_after)
        killed = time.time()
        triton.kill()  # SIGKILL to the server and its stubs; waits for them and removes their shared memory
        restarting = time.time()
        triton.start()
        triton_ready = time.time()
        records = load.records()
    after_ready = [r for r in records if r[2] == 200 and r[0] + r[1] > triton_ready]
    first_answer = min(r[0] + r[1] for r in after_ready) if after_ready else None
    ready_again = next((t for t, code in sampler.ready if t > triton_ready and code == 200), None)
    outage = [r for r in records if r[0] >= killed and (first_answer is None or r[0] + r[1] <= first_answer)]
    failed = [r for r in outage if r[2] != 200]
    not_ready_seen = any(code == 503 for t, code in sampler.ready if killed < t < triton_ready)
    result = {
        "triton_restart_s": round(triton_ready - restarting, 2),
        "recovery_s": round(first_answer - triton_ready, 2) if first_answer else None,
        "readyz_true_after_s": round(ready_again - triton_ready, 2) if ready_again else None,
        "outage_from_kill_s": round(first_answer - killed, 2) if first_answer else None,
        "readyz_false_during_outage": not_ready_seen,
        "failed_during_outage": len(failed),
        "failed_kinds": sorted({f"{r[2]} {r[3]}" for r in failed}),
        "slowest_failure_ms": ms([r[1] for r in failed], 100),
        "request_timeout_s": timeout_s,
        "no_hang": all(r[1] <= timeout_s + 1.0 for r in failed),
        "load": figures(records),
    }
    return result, records


def sigterm(gateway: GatewayProcess, workdir: Path, rate: float, seconds: float, after: float) -> tuple[dict, list]:
    load = Load(gateway.url, workdir, "sigterm", 50, rate / 50, seconds)
    time.sleep(after)
    signalled = time.time()
    gateway.process.send_signal(signal.SIGTERM)
    code = gateway.process.wait(60)
    exited = time.time()
    records = load.records()
    in_flight = [r for r in records if r[0] < signalled < r[0] + r[1]]
    return {"exit_code": code, "shutdown_s": round(exited - signalled, 2),
            "in_flight_at_sigterm": len(in_flight),
            "in_flight_answered_200": sum(r[2] == 200 for r in in_flight),
            "in_flight_cut": sum(r[2] == 0 for r in in_flight),
            "after_sigterm": dict(Counter(str(r[2]) if r[2] == 200 else f"{r[2]} {r[3]}" for r in records
                                          if r[0] >= signalled))}, records


def decision_log_check(database: Path | str, records: list[list]) -> dict:
    """Every accepted request id against the decision log (a SQLite file, or any SQLAlchemy URL)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database if isinstance(database, str) else f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            rows = [row[0] for row in connection.execute(text("SELECT request_id FROM decisions"))]
            callers = dict(connection.execute(text("SELECT caller, count(*) FROM decisions GROUP BY caller")).all())
    finally:
        engine.dispose()
    accepted = [r[3] for r in records if r[2] == 200]
    logged, answered = set(rows), set(accepted)
    return {"accepted": len(accepted), "rows": len(rows), "lost": len(answered - logged),
            "extra_rows": len(logged - answered), "doubled": (len(accepted) - len(answered)) + (len(rows) - len(logged)),
            "callers": callers}


# --- the run ----------------------------------------------------------------------------------
def run(args) -> dict:
    started, started_utc = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    workdir = Path(tempfile.mkdtemp(prefix="adaudit-reliability-"))
    bodies = load_ads(args.data, args.ads)
    (workdir / "bodies.jsonl").write_bytes(b"\n".join(bodies) + b"\n")
    repo = workdir / "repository"
    serving = ServingSettings(threads=1)  # ONNX Runtime (the CPU default); the two model processes share the two
    # cores with locust and the gateway
    export_model(args.student, repo, "student", 1, serving)
    export_model(args.teacher, repo, "teacher", 1, serving)
    http, grpc, metrics_port = free_ports(3)
    triton = TritonServer(repo, http, grpc, metrics_port, log_file=workdir / "triton.log")
    gateways: list[GatewayProcess] = []
    settings = {"api_keys": f"bench:{digest(KEY)}", "max_in_flight": args.max_in_flight,
                "request_timeout_s": args.request_timeout, "shadow_model": "teacher", "model_repository": repo}

    def gateway(name: str, **extra) -> GatewayProcess:
        process = GatewayProcess(name, workdir, triton.url, **{**settings, **extra}).start()
        gateways.append(process)
        return process

    try:
        triton.start()
        log(f"Triton ready; gateway with max_in_flight {args.max_in_flight}")
        main = gateway("main", shadow_fraction=0.0)
        all_records: list[list] = run_load(main.url, workdir, "warm-up", 4, 0, 10)  # logged too: counted
        result: dict = {}
        with Sampler(main.process.pid) as rss:
            log("unloaded: 1 user, closed loop")
            records = run_load(main.url, workdir, "unloaded", 1, 0, args.unloaded_seconds)
            all_records += records
            result["unloaded"] = figures(records)
            log(f"  {result['unloaded']}")
            log(f"saturation: {args.max_in_flight} users, closed loop")
            records = run_load(main.url, workdir, "saturation", args.max_in_flight, 0, args.saturation_seconds)
            all_records += records
            result["saturation"] = figures(records)
            rate = result["saturation"]["accepted_per_s"]
            log(f"  {result['saturation']}")
            for name, share in (("steady", 0.8), ("overload", 1.5)):
                log(f"{name}: {share:.0%} of {rate}/s for {args.seconds:.0f} s, {args.users} users")
                mark, cpu = time.time(), (cpu_of(pid=main.process.pid), cpu_of(session=triton.process.pid),
                                          machine_busy())
                records = run_load(main.url, workdir, name, args.users, share * rate / args.users, args.seconds)
                wall = time.time() - mark
                all_records += records
                result[name] = {**figures(records), "target_per_s": round(share * rate, 1),
                                "gateway_cores": round((cpu_of(pid=main.process.pid) - cpu[0]) / wall, 2),
                                "triton_cores": round((cpu_of(session=triton.process.pid) - cpu[1]) / wall, 2),
                                "machine_busy_cores": round((machine_busy() - cpu[2]) / wall, 2),
                                "gateway_memory": memory([s for s in rss.rss if mark <= s[0] <= mark + wall])}
                log(f"  {result[name]}")
            log("shadow: off (baseline)")
            records = run_load(main.url, workdir, "shadow-off", 50, 0.5 * rate / 50, args.shadow_seconds)
            all_records += records
            result["shadow"] = {"off": figures(records)}
        result["gateway_memory_series"] = rss.rss
        log("triton kill and restart under load")
        result["triton_kill"], records = triton_kill(triton, main, workdir, 0.4 * rate, args.kill_seconds,
                                                     args.kill_after, args.request_timeout)
        all_records += records
        log(f"  {result['triton_kill']}")
        log("sigterm to the gateway under load")
        result["sigterm"], records = sigterm(main, workdir, 0.5 * rate, 20, 10)
        all_records += records
        log(f"  {result['sigterm']}")
        result["decision_log"] = {"main": decision_log_check(workdir / "decisions-main.db", all_records)}
        for name, extra in (("teacher_down", {"shadow_model": "teacher_not_served"}), ("teacher_slow", {})):
            log(f"shadow: {name}")
            other = gateway(name, shadow_fraction=1.0, **extra)
            records = run_load(other.url, workdir, name, 50, 0.5 * rate / 50, args.shadow_seconds)
            shadow_metrics = httpx.get(f"{other.url}/metrics").text
            other.stop()
            result["shadow"][name] = {**figures(records), "shadow_counters": {
                line.split()[0]: float(line.split()[1]) for line in shadow_metrics.splitlines()
                if line.startswith(("adaudit_shadow_comparisons_total", "adaudit_shadow_dropped_total",
                                    'adaudit_errors_total{kind="shadow_failed"}'))}}
            result["decision_log"][name] = decision_log_check(workdir / f"decisions-{name}.db", records)
            log(f"  {result['shadow'][name]}")
    except TritonError:
        log_tail = (workdir / "triton.log").read_text(errors="replace").splitlines()[-15:]
        print("tritonserver's last log lines:\n" + "\n".join(log_tail), file=sys.stderr)
        raise
    finally:
        for process in gateways:
            process.stop()
        triton.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"command": args.command, "started_utc": started_utc, "wall_seconds": round(time.monotonic() - started),
            "machine": machine(), "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "settings": {"max_in_flight": args.max_in_flight,
                                               "request_timeout_s": args.request_timeout, "users": args.users,
                                               "phase_seconds": args.seconds, "triton_threads_per_model": 1},
            "student": str(args.student), "teacher": str(args.teacher), "distinct_ads": len(bodies),
            **result, "goals": GOALS, "achieved": achieved(result)}


def run_replicas_phase(args) -> dict:
    """`--replicas`: benchmarks/replicas.py's phase, with this benchmark's provenance and goals."""
    from benchmarks.replicas import run_replicas

    started, started_utc = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    result = run_replicas(args, KEY)
    log_, cross = result["decision_log"], result["cross_gateway"]
    return {"command": args.command, "started_utc": started_utc, "wall_seconds": round(time.monotonic() - started),
            "machine": machine(), "load_average_at_start": load_at_start,
            "settings": {"max_in_flight": args.max_in_flight, "request_timeout_s": args.request_timeout,
                         "users": args.users, "phase_seconds": args.seconds, "offered_per_s": args.replicas_rate,
                         "triton_threads_per_model": 1, "gateways": 2, "tritonservers": 2,
                         "decision_log": "PostgreSQL"},
            "student": str(args.student), "replicas": result,
            "goals": {"lost_or_doubled": 0, "feedback_across_gateways": "all"},
            "achieved": {"lost": log_["lost"], "doubled": log_["doubled"],
                         "lost_or_doubled_met": log_["lost"] == 0 and log_["doubled"] == 0,
                         "cross_gateway_met": cross["feedback_sent"] > 0 and cross["feedback_sent"]
                         == cross["feedback_accepted"] == cross["read_back_with_feedback"]
                         == cross["reviewed_counted_by_the_other_gateway"]}}


def achieved(result: dict) -> dict:
    logs = result["decision_log"].values()
    lost = sum(entry["lost"] for entry in logs)
    doubled = sum(entry["doubled"] for entry in logs)
    ratio = (result["overload"]["p99_ms"] / result["unloaded"]["p99_ms"]
             if result["overload"].get("p99_ms") and result["unloaded"].get("p99_ms") else None)
    recovery = result["triton_kill"]["recovery_s"]
    return {"lost": lost, "doubled": doubled, "lost_or_doubled_met": lost == 0 and doubled == 0,
            "recovery_s": recovery, "recovery_met": recovery is not None and recovery < GOALS["recovery_s"],
            "overload_p99_over_unloaded_p99": round(ratio, 2) if ratio else None,
            "overload_met": ratio is not None and ratio < GOALS["overload_p99_over_unloaded_p99"]}


def markdown(summary: dict) -> str:
    a = summary["achieved"]
    rows = []
    for name in ("unloaded", "saturation", "steady", "overload"):
        f = summary[name]
        rows.append(f"| {name} | {f.get('target_per_s', '-')} | {f['offered_per_s']} | {f['accepted_per_s']} | "
                    f"{f['p50_ms']} | {f['p99_ms']} | {f['shed_fraction']:.1%} | {f['shed_p99_ms'] or '-'} | "
                    f"{f['error_rate']:.2%} | {f.get('gateway_memory', {}).get('max_mb', '-')} |")
    shadow = summary["shadow"]
    kill, term = summary["triton_kill"], summary["sigterm"]
    logs = "; ".join(f"{name}: {v['accepted']} accepted, {v['rows']} rows, {v['lost']} lost, {v['doubled']} doubled, "
                     f"{v['extra_rows']} rows without an answer" for name, v in summary["decision_log"].items())
    load = summary["load_average_at_start"][0]
    disturbed = (f"\n**Disturbed run**: other jobs were using the machine (load average {load} at the start, "
                 f"{summary['load_average_at_end'][0]} at the end, on {summary['machine'].get('cores')} cores): "
                 "every latency and rate below is of a shared, overloaded machine.\n" if load > 1.0 else "")
    after = summary["sigterm"]["after_sigterm"]
    refused = sum(n for kind, n in after.items() if kind == "0 ConnectionRefusedError")
    cut = sum(n for kind, n in after.items() if kind.startswith("0 ") and kind != "0 ConnectionRefusedError")
    return f"""# Reliability benchmark

`{summary['command']}`, {summary['started_utc']}, {summary['wall_seconds']} s (meant to run under
`flock /tmp/adaudit-cpu.lock`, alone on the machine).
{disturbed}
Real Triton (bundled tritonserver, CPU, one torch thread per model) + the gateway (one uvicorn process,
`max_in_flight` {summary['settings']['max_in_flight']}, API keys on, SQLite decision log) + locust, all on
loopback on the same {summary['machine'].get('cores')}-core machine: the load generator, the gateway and
Triton share the cores. Latencies are of accepted (200) requests only, from locust's per-request records.

| phase | target /s | offered /s | accepted /s | p50 ms | p99 ms | shed | shed p99 ms | errors | gateway RSS max MB |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Refused requests by status and kind: steady {summary['steady']['refused']}, overload {summary['overload']['refused']}.
CPU cores busy (whole machine) / gateway / Triton: steady {summary['steady']['machine_busy_cores']} /
{summary['steady']['gateway_cores']} / {summary['steady']['triton_cores']}, overload
{summary['overload']['machine_busy_cores']} / {summary['overload']['gateway_cores']} / {summary['overload']['triton_cores']}
(the rest is locust and any other process); load average at start {summary['load_average_at_start']}, at end
{summary['load_average_at_end']}.
Gateway memory over the load phases: {memory(summary['gateway_memory_series'])}.

Shadow at 0.5 X: off p50/p99 {shadow['off']['p50_ms']}/{shadow['off']['p99_ms']} ms; teacher down (not served)
{shadow['teacher_down']['p50_ms']}/{shadow['teacher_down']['p99_ms']} ms; real teacher (slow)
{shadow['teacher_slow']['p50_ms']}/{shadow['teacher_slow']['p99_ms']} ms. Counters: down
{shadow['teacher_down']['shadow_counters']}, slow {shadow['teacher_slow']['shadow_counters']}.

Triton killed (SIGKILL, server and model processes) under load and restarted on the same ports: Triton's own restart
{kill['triton_restart_s']} s; the gateway answered again {kill['recovery_s']} s after Triton was ready
(/readyz true after {kill['readyz_true_after_s']} s; {kill['outage_from_kill_s']} s from the kill);
/readyz false during the outage: {kill['readyz_false_during_outage']}; {kill['failed_during_outage']} requests failed
({', '.join(kill['failed_kinds'])}), the slowest after {kill['slowest_failure_ms']} ms (request timeout
{kill['request_timeout_s']} s, no hang: {kill['no_hang']}).

SIGTERM to the gateway under load: it exited (code {term['exit_code']}: uvicorn re-raises the signal after a clean
shutdown) {term['shutdown_s']} s after the signal; {term['in_flight_at_sigterm']} requests were in flight at the signal
({term['in_flight_answered_200']} answered 200, {term['in_flight_cut']} cut); of the requests sent after it,
{after.get('200', 0)} were still answered 200 (already on an open connection), {refused} found the port closed
(connection refused: the client may retry elsewhere) and {cut} were cut mid-request.

Decision log: {logs}.

| goal | target | achieved |
| --- | --- | --- |
| lost or doubled decisions | 0 | {a['lost']} lost, {a['doubled']} doubled ({'met' if a['lost_or_doubled_met'] else 'not met'}) |
| recovery after a Triton restart, no gateway restart | < 10 s | {a['recovery_s']} s ({'met' if a['recovery_met'] else 'not met'}) |
| p99 of accepted requests at 150% / unloaded p99 | < 3x | {a['overload_p99_over_unloaded_p99']}x ({'met' if a['overload_met'] else 'not met'}) |
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, help="the shadow model (not needed with --replicas)")
    parser.add_argument("--data", type=Path, required=True, help="data folder with test.jsonl and its images")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--ads", type=int, default=128, help="distinct ads to cycle through")
    parser.add_argument("--max-in-flight", type=int, default=8, help="the gateway's max_in_flight")
    parser.add_argument("--request-timeout", type=float, default=5.0, help="the gateway's request_timeout_s")
    parser.add_argument("--users", type=int, default=100, help="locust users in the steady and overload phases")
    parser.add_argument("--seconds", type=float, default=120, help="steady and overload phase length")
    parser.add_argument("--unloaded-seconds", type=float, default=30)
    parser.add_argument("--saturation-seconds", type=float, default=30)
    parser.add_argument("--shadow-seconds", type=float, default=30)
    parser.add_argument("--kill-seconds", type=float, default=45)
    parser.add_argument("--kill-after", type=float, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, records)")
    parser.add_argument("--replicas", action="store_true", help="only the replicas phase: 2 gateways, 2 "
                        "tritonservers, one PostgreSQL log (benchmarks/replicas.py); --seconds is its length")
    parser.add_argument("--replicas-rate", type=float, default=60.0, help="ads/s offered over both gateways")
    args = parser.parse_args(argv)
    if not args.replicas and args.teacher is None:
        parser.error("--teacher is required (except with --replicas)")
    args.command = shlex.join(["python", "-m", "benchmarks.reliability", *(sys.argv[1:] if argv is None else argv)])
    try:
        summary = run_replicas_phase(args) if args.replicas else run(args)
    except (RuntimeError, TritonError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replicas:
        from benchmarks.replicas import markdown as replicas_markdown

        atomic_write_text(args.out / "reliability-replicas.json", json.dumps(summary, indent=1) + "\n")
        atomic_write_text(args.out / "reliability-replicas.md", replicas_markdown(summary))
        log(f"achieved: {summary['achieved']}; wrote {args.out / 'reliability-replicas.json'} and .md")
        return
    atomic_write_text(args.out / "reliability.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(args.out / "reliability.md", markdown(summary))
    log(f"achieved: {summary['achieved']}; wrote {args.out / 'reliability.json'} and reliability.md")


if __name__ == "__main__":
    main()
