"""The locust user of benchmarks/reliability.py: real ads POSTed to the gateway at a steady rate per user.

Run by the benchmark as `locust -f benchmarks/locust_audits.py --headless ...`, configured by
environment variables:

    LOAD_BODIES   a file of JSON request bodies, one per line (real test ads, image_base64 + text)
    LOAD_RATE     requests per second per user, as a Poisson process (random exponential gaps on a schedule
                  the user keeps: an open loop while answers come faster than the gaps); 0: closed loop
    LOAD_KEY      the API key (Authorization: Bearer)
    LOAD_RECORDS  where to write every request as a JSON line at the end:
                  [start unix time, seconds, status (0: no HTTP answer), request_id or error kind]

Locust's own statistics mix shed 503s (answered in microseconds) with accepted requests, so the
benchmark computes its figures from these records instead.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time

from locust import FastHttpUser, constant, events, task

BODIES = [line.rstrip(b"\n") for line in open(os.environ["LOAD_BODIES"], "rb") if line.strip()]
RATE = float(os.environ.get("LOAD_RATE", "0"))
HEADERS = {"content-type": "application/json", "authorization": f"Bearer {os.environ.get('LOAD_KEY', '')}"}
RECORDS: list[list] = []
NEXT = itertools.count()
MARK = b'"request_id":"'


def poisson_schedule(user) -> float:
    """Seconds until this user's next arrival; arrivals of all users together form one Poisson process."""
    now = time.monotonic()
    user.next_at = getattr(user, "next_at", now) + random.expovariate(RATE)
    return max(0.0, user.next_at - now)


class AuditUser(FastHttpUser):
    wait_time = poisson_schedule if RATE > 0 else constant(0)
    network_timeout = 60.0
    connection_timeout = 10.0

    @task
    def audit(self):
        body = BODIES[next(NEXT) % len(BODIES)]
        started, clock = time.time(), time.perf_counter()
        try:
            with self.client.post("/v1/audits", data=body, headers=HEADERS, catch_response=True) as response:
                elapsed = time.perf_counter() - clock
                status = response.status_code or 0
                detail = ""
                content = response.content or b""
                if status == 200:
                    start = content.find(MARK) + len(MARK)
                    detail = content[start:start + 32].decode()
                elif status:
                    detail = json.loads(content).get("kind", "") if content.startswith(b"{") else str(status)
                else:
                    detail = type(response.error).__name__ if response.error else "no_answer"
                response.success()  # shed and failed requests are counted by the benchmark, not by locust
        except Exception as error:  # noqa: BLE001 - a load generator records, it does not stop
            elapsed, status, detail = time.perf_counter() - clock, 0, type(error).__name__
        RECORDS.append([round(started, 4), round(elapsed, 5), status, detail])


@events.test_stop.add_listener
def write_records(**_):
    with open(os.environ["LOAD_RECORDS"], "w") as stream:
        for record in RECORDS:
            stream.write(json.dumps(record) + "\n")
