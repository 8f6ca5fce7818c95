"""The replicas phase of benchmarks/reliability.py (`--replicas`): the production topology on one machine.

    flock /tmp/adaudit-cpu.lock python -m benchmarks.reliability --replicas --student DIR --data DIR

Two gateways (uvicorn processes) write one decision log on a throwaway PostgreSQL cluster, whose schema
is made by the code of `adaudit db upgrade` before they start (a gateway on a server database runs no
DDL). Each gateway spreads its Triton calls over two bundled tritonservers (`triton_url` names both, as a
headless Service's name resolves to every Triton pod). Two locust processes load the two gateways at the
same time. Mid-phase one tritonserver is SIGKILLed and started again on the same ports. Afterwards:

- every accepted request id is looked up in the shared log: lost (answered, no row), doubled (a request
  id answered or logged twice), rows without an answer;
- feedback for ads gateway A answered is sent through gateway B, their decisions read back through B,
  and the reviewed accuracy read through A must count them all;
- each tritonserver's share of the student's requests, from its own counters.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine

from adaudit.export.repository import ServingSettings, export_model
from adaudit.export.server import TritonError, TritonServer
from adaudit.service.schema import upgrade_schema
from adaudit.service.security import digest
from benchmarks.postgres import PostgresCluster
from benchmarks.reliability import Load, decision_log_check, figures
from benchmarks.serving import GatewayProcess, TritonMetrics, free_ports, load_ads, log

FEEDBACK_ADS = 20


def triton_pair(repo: Path, workdir: Path) -> list[tuple[TritonServer, TritonMetrics]]:
    servers = []
    for name in ("a", "b"):
        http, grpc, metrics_port = free_ports(3)
        server = TritonServer(repo, http, grpc, metrics_port, log_file=workdir / f"triton-{name}.log")
        servers.append((server, TritonMetrics(metrics_port, http)))
    return servers


def served(metrics: TritonMetrics, model: str = "student") -> float:
    try:
        return metrics.counters(model)["success"]
    except OSError:  # the server is down: its counters restart from 0 with it
        return 0.0


def cross_gateway_feedback(a: GatewayProcess, b: GatewayProcess, records: list[list], key: str) -> dict:
    """Feedback through B for ads A answered; each decision read back through B; reviewed accuracy through A."""
    headers = {"authorization": f"Bearer {key}"}
    ids = [r[3] for r in records if r[2] == 200][:FEEDBACK_ADS]
    sent = [httpx.post(f"{b.url}/v1/audits/{request_id}/feedback", headers=headers, timeout=10,
                       json={"labels": {"verdict": "approve"}}).status_code for request_id in ids]
    read = [httpx.get(f"{b.url}/v1/audits/{request_id}", headers=headers, timeout=10) for request_id in ids]
    accuracy = httpx.get(f"{a.url}/v1/reviews/accuracy", headers=headers, timeout=10).json()
    reviewed = sum(row["reviewed"] for row in accuracy if row["task"] == "verdict")
    return {"feedback_sent": len(ids), "feedback_accepted": sent.count(200),
            "read_back_with_feedback": sum(r.status_code == 200 and r.json().get("feedback") == {"verdict": "approve"}
                                           for r in read),
            "reviewed_counted_by_the_other_gateway": reviewed}


def run_replicas(args, key: str) -> dict:
    """Two gateways x two tritonservers on one PostgreSQL log, under load from two locust processes."""
    workdir = Path(tempfile.mkdtemp(prefix="adaudit-replicas-"))
    (workdir / "bodies.jsonl").write_bytes(b"\n".join(load_ads(args.data, args.ads)) + b"\n")
    repo = workdir / "repository"
    export_model(args.student, repo, "student", 1, ServingSettings(threads=1))
    tritons, cluster, gateways = triton_pair(repo, workdir), PostgresCluster.started(), []
    try:
        engine = create_engine(cluster.url)
        upgrade_schema(engine)
        engine.dispose()
        for server, _ in tritons:
            server.start()
        triton_url = ",".join(server.url for server, _ in tritons)
        for name in ("a", "b"):
            gateways.append(GatewayProcess(name, workdir, triton_url, api_keys=f"bench:{digest(key)}",
                                           max_in_flight=args.max_in_flight, request_timeout_s=args.request_timeout,
                                           database_url=cluster.url, triton_resolve_interval_s=1.0,
                                           model_repository=repo).start())
        log(f"replicas: 2 gateways, 2 tritonservers ({triton_url}), PostgreSQL on port {cluster.port}")
        return measure(args, workdir, tritons, gateways, key, cluster.url)
    except TritonError:
        for name in ("a", "b"):
            tail = (workdir / f"triton-{name}.log").read_text(errors="replace").splitlines()[-15:]
            print(f"tritonserver {name}'s last log lines:\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        for gateway in gateways:
            gateway.stop()
        for server, _ in tritons:
            server.stop()
        cluster.remove()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def measure(args, workdir: Path, tritons: list, gateways: list[GatewayProcess], key: str, database_url: str) -> dict:
    """The loaded phase: both gateways at once, tritonserver b killed and restarted halfway."""
    before = [served(metrics) for _, metrics in tritons]
    users = max(args.users // 2, 1)
    rate_per_user = args.replicas_rate / 2 / users
    loads = [Load(gateway.url, workdir, f"replicas-{gateway.name}", users, rate_per_user, args.seconds)
             for gateway in gateways]
    time.sleep(args.seconds / 2)
    killed, (victim, victim_metrics) = time.time(), tritons[1]
    served_by_victim_before_kill = served(victim_metrics) - before[1]
    victim.kill()
    victim.start()
    restarted = time.time()
    records = {gateway.name: load.records() for gateway, load in zip(gateways, loads)}
    after = [served(metrics) for _, metrics in tritons]
    shares = [after[0] - before[0], served_by_victim_before_kill + after[1]]  # b's counters restarted at the kill
    everything = records["a"] + records["b"]
    return {
        "gateways": {name: figures(entries) for name, entries in records.items()},
        "all": figures(everything),
        "triton_requests": {"a": int(shares[0]), "b": int(shares[1]),
                            "a_share": round(shares[0] / max(sum(shares), 1), 3)},
        "triton_b_killed_at_s": round(killed - min(r[0] for r in everything), 1),
        "triton_b_restart_s": round(restarted - killed, 2),
        "decision_log": decision_log_check(database_url, everything),
        "cross_gateway": cross_gateway_feedback(gateways[0], gateways[1], records["a"], key),
    }


def markdown(summary: dict) -> str:
    r = summary["replicas"]
    log_, cross, shares = r["decision_log"], r["cross_gateway"], r["triton_requests"]
    rows = "\n".join(f"| {name} | {f['requests']} | {f['accepted_per_s']} | {f['p50_ms']} | {f['p99_ms']} | "
                     f"{f['shed_fraction']:.1%} | {f['error_rate']:.2%} | {f['refused']} |"
                     for name, f in {**r["gateways"], "both": r["all"]}.items())
    a = summary["achieved"]
    return f"""# Reliability benchmark: two gateways, two tritonservers, one PostgreSQL log

`{summary['command']}`, {summary['started_utc']}, {summary['wall_seconds']} s, load average at start
{summary['load_average_at_start']} on {summary['machine'].get('cores')} cores.

Two gateways (uvicorn, `max_in_flight` {summary['settings']['max_in_flight']}) share one decision log on a
throwaway PostgreSQL cluster; each spreads its calls over two bundled tritonservers. Two locust processes offer
{summary['settings']['offered_per_s']} ads/s in all for {summary['settings']['phase_seconds']} s; tritonserver b
was SIGKILLed {r['triton_b_killed_at_s']} s in and was serving again {r['triton_b_restart_s']} s later.

| gateway | requests | accepted /s | p50 ms | p99 ms | shed | errors | refused by kind |
| --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

Triton requests for the student: a {shares['a']}, b {shares['b']} (a's share {shares['a_share']:.1%}).
Decision log: {log_['accepted']} accepted, {log_['rows']} rows, {log_['lost']} lost, {log_['doubled']} doubled,
{log_['extra_rows']} rows without an answer; rows by caller {log_['callers']}.
Feedback through gateway b for {cross['feedback_sent']} ads gateway a answered: {cross['feedback_accepted']}
accepted, {cross['read_back_with_feedback']} read back with it through b, {cross['reviewed_counted_by_the_other_gateway']}
counted by gateway a's reviewed accuracy.

| goal | target | achieved |
| --- | --- | --- |
| lost or doubled decisions | 0 | {a['lost']} lost, {a['doubled']} doubled ({'met' if a['lost_or_doubled_met'] else 'not met'}) |
| feedback across gateways | all {cross['feedback_sent']} | {cross['reviewed_counted_by_the_other_gateway']} ({'met' if a['cross_gateway_met'] else 'not met'}) |
"""
