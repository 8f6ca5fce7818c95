"""Gateway-side batching (service/coalescing.py): what waits goes together, and every caller gets its own answer.

The unit tests drive a `Coalescer` with a slow fake batch function (it only records what it was
given); the last test sends concurrent audits of distinct ads through the real app (embedded
backend, tiny models, real SQLite) over real HTTP and checks each answer against the same ad
audited alone, and that some backend calls and commits did carry several requests.
"""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import create_engine, text

from adaudit.training.presets import preset_config
from adaudit.models.modeling import AuditModel
from adaudit.models.tokenizer import build_vocabulary
from adaudit.service.app import create_app
from adaudit.service.coalescing import Coalescer
from adaudit.service.settings import GatewaySettings
from loopback import ServerThread


class Recorder:
    def __init__(self, delay: float = 0.02, fail_when=None):
        self.calls: list[list] = []
        self.delay, self.fail_when = delay, fail_when

    async def __call__(self, key, items):
        self.calls.append(list(items))
        await asyncio.sleep(self.delay)
        if self.fail_when is not None and self.fail_when(items):
            raise RuntimeError(f"batch of {len(items)} failed")
        return [(key, item * 10) for item in items]


def test_a_lone_call_goes_at_once_and_waiting_calls_go_together():
    async def scenario():
        recorder = Recorder()
        coalescer = Coalescer(recorder, in_flight=1)
        alone = await coalescer.submit("m", 1)
        running = asyncio.create_task(coalescer.submit("m", 2))
        await asyncio.sleep(0.005)  # its call is running now
        results = await asyncio.gather(running, *(coalescer.submit("m", i) for i in range(3, 8)))
        return recorder.calls, alone, results

    calls, alone, results = asyncio.run(scenario())
    assert alone == ("m", 10)
    assert results == [("m", i * 10) for i in range(2, 8)]  # each caller its own result, in order
    assert calls[0] == [1]
    assert calls[1] == [2]  # went at once: nothing was running
    assert calls[2] == [3, 4, 5, 6, 7]  # waited behind it, left together


def test_the_limit_counts_ads_and_keys_never_mix():
    async def scenario():
        recorder = Recorder()
        coalescer = Coalescer(recorder, in_flight=1)
        sizes = [3, 3, 3, 1, 2]
        await asyncio.gather(*(coalescer.submit("a", n, size, limit=6) for n, size in enumerate(sizes)),
                             *(coalescer.submit("b", 100 + n) for n in range(3)))
        return recorder.calls

    calls = asyncio.run(scenario())
    a_calls = [c for c in calls if c[0] < 100]
    b_calls = [c for c in calls if c[0] >= 100]
    sizes = [3, 3, 3, 1, 2]
    assert all(sum(sizes[i] for i in call) <= 6 for call in a_calls)
    assert sorted(i for call in a_calls for i in call) == list(range(5))
    assert sorted(i for call in b_calls for i in call) == [100, 101, 102]


def test_in_flight_bounds_concurrent_calls():
    async def scenario():
        running, peak = 0, 0

        async def run(key, items):
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            return items

        coalescer = Coalescer(run, in_flight=2)
        results = await asyncio.gather(*(coalescer.submit("m", i, 1, limit=5) for i in range(20)))
        return peak, results

    peak, results = asyncio.run(scenario())
    assert peak == 2 and results == list(range(20))


def test_a_failed_call_fails_each_of_its_callers_and_the_next_call_still_runs():
    async def scenario():
        recorder = Recorder(fail_when=lambda items: 3 in items)
        coalescer = Coalescer(recorder, in_flight=1)
        first = asyncio.create_task(coalescer.submit("m", 1))
        await asyncio.sleep(0)
        together = [asyncio.create_task(coalescer.submit("m", i)) for i in (2, 3, 4)]
        outcomes = await asyncio.gather(first, *together, return_exceptions=True)
        after = await coalescer.submit("m", 5)
        return outcomes, after

    outcomes, after = asyncio.run(scenario())
    assert outcomes[0] == ("m", 10)
    assert all(isinstance(o, RuntimeError) for o in outcomes[1:])
    assert after == ("m", 50)


def test_a_cancelled_caller_is_skipped():
    async def scenario():
        recorder = Recorder()
        coalescer = Coalescer(recorder, in_flight=1)
        first = asyncio.create_task(coalescer.submit("m", 1))
        await asyncio.sleep(0)
        gone = asyncio.create_task(coalescer.submit("m", 2))
        kept = asyncio.create_task(coalescer.submit("m", 3))
        await asyncio.sleep(0)
        gone.cancel()
        return await first, await kept, recorder.calls

    first, kept, calls = asyncio.run(scenario())
    assert (first, kept) == (("m", 10), ("m", 30))
    assert calls == [[1], [3]]


def noise_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(3)
    AuditModel(preset_config("tiny", len(build_vocabulary()))).eval().save_pretrained(folder / "student")
    return folder


def test_concurrent_audits_share_backend_calls_and_each_gets_its_own_answer_and_row(model_dir, tmp_path):
    database = tmp_path / "log.db"
    settings = GatewaySettings(backend="embedded", model_dir=model_dir, database_url=f"sqlite:///{database}",
                               shadow_model=None)
    copies = ["限时特价，全网最低价", "纯天然蜂蜜，产地直供", "新款跑鞋，轻便透气", "保本保息年化收益15%"]
    bodies = [{"image_base64": base64.b64encode(noise_png(n)).decode(), "text": copies[n % 4], "ad_id": f"c{n}"}
              for n in range(24)]

    async def scenario(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            alone = [(await client.post("/v1/audits", json=body)).json() for body in bodies]
            together = await asyncio.gather(*(client.post("/v1/audits", json=body) for body in bodies))
            metrics = (await client.get("/metrics")).text
        return alone, [answer.json() for answer in together], metrics

    torch.set_num_threads(1)
    with ServerThread(create_app(settings)) as server:
        alone, together, metrics = asyncio.run(scenario(server.url))
    for single, concurrent in zip(alone, together):
        assert concurrent["ad_id"] == single["ad_id"]
        assert concurrent["scores"] == pytest.approx(single["scores"], abs=1e-4)
        assert concurrent["attributes"] == single["attributes"]
    assert len({a["scores"]["verdict"] for a in alone}) > 1  # distinct ads, distinct answers: a mix-up would show

    def sample(name: str) -> float:
        line = next(l for l in metrics.splitlines() if l.startswith(name + "{") and 'model="student"' in l)
        return float(line.rsplit(" ", 1)[1])

    calls, ads = sample("adaudit_backend_batch_ads_count"), sample("adaudit_backend_batch_ads_sum")
    assert ads == 48 and calls < ads  # 48 ads in fewer backend calls: some calls carried several requests
    with create_engine(f"sqlite:///{database}").connect() as connection:
        logged = connection.execute(text("SELECT count(*) FROM decisions")).scalar()
    assert logged == 48  # every decision has its row


def test_when_the_caller_making_the_call_is_cancelled_the_waiting_ones_are_still_answered():
    async def scenario():
        recorder = Recorder(delay=0.05)
        coalescer = Coalescer(recorder, in_flight=1)
        caller = asyncio.create_task(coalescer.submit("m", 1))  # makes the call itself
        await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(coalescer.submit("m", i)) for i in (2, 3)]
        await asyncio.sleep(0.01)
        caller.cancel()
        answers = await asyncio.gather(*waiting)
        later = await asyncio.wait_for(coalescer.submit("m", 4), 1)  # the call slot was given back
        return caller.cancelled(), answers, later, recorder.calls

    cancelled, answers, later, calls = asyncio.run(scenario())
    assert cancelled and answers == [("m", 20), ("m", 30)] and later == ("m", 40)
    assert calls == [[1], [2, 3], [4]]
