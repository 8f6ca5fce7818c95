"""The audit path: policy -> preprocessing -> backend -> labels -> decision log -> shadow.

`Gateway.audit(raw)` answers a list of unchecked ads (one for `POST /v1/audits`, up to
`max_batch` for the batch route):

1. the policy picks each ad's target (primary, or the canary: sticky per ad id);
2. one call checks and decodes every ad (intake.py: bad input is a 4xx here) and makes each
   target's inputs with `encoding.Encoder`, sized by the model's `ModelSpec` (cached
   `SPEC_TTL_S` seconds, so a newly rolled-out version is picked up). It runs in a worker
   thread, so the event loop keeps serving other requests meanwhile, except for one small ad
   (at most `INLINE_IMAGE_BYTES`) with no other audit in flight: that is decoded inline, since
   at batch 1 the two thread hops cost more than they free (`Gateway.inline`);
3. per target, its ads go to the backend through a `Coalescer` (coalescing.py): ads of
   concurrent requests for one model leave in one backend call, up to the model's max batch
   size, with at most `backend_calls_in_flight` calls per model at once; a canary that fails
   falls back to the primary (counted as `canary_failed`); a primary that fails is a 503;
4. every decision is written to the decision log, with the caller's name, before anything is
   answered: if the log cannot take it (database down, locked past `request_timeout_s`) the
   request fails with 503 `decision_log_unavailable` and the client retries, so no answer ever
   goes out without its row (the policy: fail, never answer unlogged; no spool to lose on a
   restart). Concurrent requests' rows share one commit (a `Coalescer` again), from a worker
   thread: a database that waits (a SQLite lock held by a reviewer's feedback or a backup, a
   PostgreSQL server that is slow or gone) never blocks the event loop. The gateway writes
   through one call, `DecisionLog.write_decisions`, whose strategy the database URL picks
   (decision_log.py): on a SQLite file a lone audit's row is written on the event loop when the
   write lock is free that instant (else the thread path). Answered ads are counted in
   `adaudit_predictions_total`;
5. the ads the policy mirrors are offered to the shadow queue, after the answer is logged.

Each answer is an audit decision (adaudit.decisions, docs/decisions.md): the audit policy the
request named (or `default_policy`; an unknown name is a 422 before any work) turns the model's
probabilities and the copy's term hits into `suggestion`, `reasons`, `term_hits`, and the answer's
`verdict` and `violation` follow that decision's one rule, so they never contradict each other. The
policies reload while serving (audit_policies.py).

Each target (primary, canary, shadow) has its own backend: with Triton, one per distinct address
(`triton_url`, `canary_triton_url`, `shadow_triton_url`: `backends_by_target`), so a shadow on its
own Triton (its own GPU) takes nothing from the primary's server. Specs and backend calls are keyed
by the backend as well as the model, so two servers serving the same model name never mix.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import numpy as np

from adaudit.decisions.decide import Decision, decide

from .audit_policies import AuditPolicies
from .backends import BackendError
from .coalescing import Coalescer
from .decision_log import REVIEW_ITEM, ROLES, DecisionLog, roles, drawn_for_review, now, review_item
from .encoding import Encoder, ModelSpec, Prediction, predictions, select
from .errors import ApiError
from .evidence import Explainer
from .intake import Ad, Limits, RawAd, decode_ads
from .metrics import GatewayMetrics
from .policy import CANARY, PRIMARY, Target, TrafficPolicy
from .shadow import ShadowJob, ShadowMirror

log = logging.getLogger("adaudit.service")
SPEC_TTL_S = 10.0
INLINE_IMAGE_BYTES = 256 * 1024  # a lone ad's picture up to this size is decoded on the event loop (a short decode)
SHADOW = "shadow"  # the policy's shadow target's arm
ARMS = (PRIMARY, CANARY, SHADOW)


def backends_by_target(settings, make_backend) -> dict[str, object]:
    """{arm: backend} for the primary, the canary and the shadow: with Triton, one backend per distinct
    address (`settings.triton_urls()`), each made by `make_backend(settings with triton_url = that
    address)`; the embedded backend serves every target in-process."""
    if settings.backend != "triton":
        backend = make_backend(settings)
        return {arm: backend for arm in ARMS}
    made: dict[str, object] = {}
    chosen = {}
    for arm, url in settings.triton_urls().items():
        if url not in made:
            made[url] = make_backend(settings if url == settings.triton_url
                                     else settings.model_copy(update={"triton_url": url}))
        chosen[arm] = made[url]
    return chosen


def answer_labels(result: dict, taxonomy) -> dict[str, str]:
    """An answer's labels by task (what is logged, counted and compared with feedback): its verdict and
    violation under the names of the taxonomy's verdict and reason tasks, and its attributes."""
    return {taxonomy.verdict_task: result["verdict"], taxonomy.reason_task: result["violation"], **result["attributes"]}


def answer_fields(prediction: Prediction, taxonomy) -> Prediction:
    """`prediction` keyed by the answer's fields (verdict and violation for the taxonomy's verdict and reason
    tasks): what the shadow compares and counts, whatever the two models call their tasks."""
    fields = {taxonomy.verdict_task: "verdict", taxonomy.reason_task: "violation"}
    rename = lambda values: {fields.get(task, task): value for task, value in values.items()}  # noqa: E731
    return Prediction(rename(prediction.labels), rename(prediction.scores), rename(prediction.probabilities))


async def together(*awaitables):
    """`asyncio.gather`, without its task per awaitable when there is only one (the usual request:
    one ad, one target, one backend call)."""
    if len(awaitables) == 1:
        return [await awaitables[0]]
    return await asyncio.gather(*awaitables)


class Gateway:
    def __init__(self, settings, backend, decision_log: DecisionLog, metrics: GatewayMetrics,
                 policy: TrafficPolicy | None = None, backends: dict | None = None):
        """`backend` serves the primary, and every other target (arm) not in `backends` ({arm: backend},
        as `backends_by_target` makes)."""
        self.settings, self.log, self.metrics = settings, decision_log, metrics
        self.backends = {**{arm: backend for arm in ARMS}, **(backends or {})}
        self.backend = self.backends[PRIMARY]
        self.policy = policy or TrafficPolicy(settings)
        self.limits = Limits(settings.max_image_bytes, settings.max_image_pixels, settings.max_text_chars)
        self.encoder = Encoder()
        self.explainer = Explainer(self.encoder, settings.explain_max_chars, settings.explain_grid,
                                   settings.explain_window)  # explain=true (evidence.py)
        self.policies = AuditPolicies(settings.policy_dir, settings.default_policy)  # audit decisions
        # backend calls keyed by (model, version, backend): one model on two servers is two queues
        self.calls = Coalescer(self._infer_together, settings.backend_calls_in_flight,
                               lambda key, ads: metrics.backend_batch.labels(key[0], key[1]).observe(ads))
        self.writes = Coalescer(self._write_together)
        self._specs: dict[tuple, tuple[float, ModelSpec]] = {}  # (model, version, id(backend))
        self.audits_in_flight = 0
        self.shadow = None
        if self.policy.shadow is not None:
            self.shadow = ShadowMirror(self.policy.shadow, self._run_shadow, decision_log.add_disagreements, metrics,
                                       settings.shadow_queue_size, settings.shadow_workers, settings.shadow_batch,
                                       settings.shadow_busy_fraction)

    async def start(self) -> None:
        await asyncio.to_thread(self.log.prepare_schema)
        if self.shadow:
            self.shadow.start()
        try:  # warm up: load the primary (embedded) or read its config (Triton); fine if not there yet
            await self.spec(self.policy.primary.model, self.policy.primary.version)
        except BackendError as error:
            log.warning("primary model not ready at start: %s", error.message)

    async def stop(self) -> None:
        if self.shadow:
            await self.shadow.stop(self.settings.shutdown_drain_s)
        for backend in {id(b): b for b in self.backends.values()}.values():  # each distinct backend once
            await backend.close()
        await self.log.stop()

    def inline(self, raw: list[RawAd]) -> bool:
        """Whether to decode and encode `raw` on the event loop: one small ad, and no other audit in flight
        (so nothing waits behind it); anything larger or busier goes to a worker thread."""
        return self.audits_in_flight <= 1 and len(raw) == 1 and len(raw[0].image) <= INLINE_IMAGE_BYTES

    # --- models ---------------------------------------------------------------------------
    async def spec(self, model: str, version: str | None, arm: str = PRIMARY) -> ModelSpec:
        """`model`'s spec on the backend that serves target `arm`."""
        backend = self.backends[arm]
        key = (model, version, id(backend))
        cached = self._specs.get(key)
        if cached and time.monotonic() - cached[0] < SPEC_TTL_S:
            return cached[1]
        spec = await backend.describe(model, version)
        self._specs[key] = (time.monotonic(), spec)
        if arm == PRIMARY and model == self.policy.primary.model:
            self._primary_taxonomy(spec.taxonomy)
        return spec

    def _primary_taxonomy(self, taxonomy) -> None:
        """Remember the primary model's taxonomy: feedback is checked against it, and policy reloads too; a
        loaded policy that does not fit it is logged once (its audits are answered 422 policy_mismatch)."""
        if self.policies.taxonomy == taxonomy:
            return
        self.policies.taxonomy = taxonomy
        for problem in self.policies.mismatches(taxonomy):
            log.warning("audit policy does not fit the primary model's labels: %s", problem)

    async def taxonomy(self):
        """The primary model's taxonomy (models/labels.py), what reviewer feedback is checked against: the one
        last read from the backend, else read now (503 when the backend cannot say)."""
        if self.policies.taxonomy is None:
            try:
                await self.spec(self.policy.primary.model, self.policy.primary.version)
            except BackendError as error:
                raise ApiError(503, error.kind, error.message) from None
        return self.policies.taxonomy

    def cached_spec(self, model: str, version: str | None, arm: str = PRIMARY) -> ModelSpec | None:
        cached = self._specs.get((model, version, id(self.backends[arm])))
        return cached[1] if cached else None

    async def predict(self, target: Target, ads: list[Ad] | None, reuse: dict | None = None):
        """(spec, predictions, inputs, preprocess seconds, inference seconds) for `ads` on `target`."""
        spec = await self.spec(target.model, target.version, target.arm)
        backend = self.backends[target.arm]
        started = time.perf_counter()
        inputs = (reuse or {}).get(spec.input_key)
        if inputs is None:
            inputs = await asyncio.to_thread(self._encode_for, ads, spec)
        encoded = time.perf_counter()
        size = len(inputs["input_ids"])
        step = spec.max_batch_size or size
        try:
            parts = await together(*(
                self.calls.submit((spec.name, spec.version, backend),
                                  {k: v[i:i + step] for k, v in inputs.items()}, min(step, size - i),
                                  spec.max_batch_size)
                for i in range(0, size, step)))
        except BackendError:
            self._specs.pop((target.model, target.version, id(backend)), None)  # describe again next time
            raise
        inferred = time.perf_counter()
        self.metrics.inference_latency.labels(spec.name, spec.version).observe(inferred - encoded)
        answers = [p for part in parts for p in predictions(part, spec.tasks)]
        return spec, answers, inputs, encoded - started, inferred - encoded

    async def prepare(self, raw: list[RawAd]) -> tuple[dict[Target, list[int]], list[Ad], dict, float]:
        """(ad indexes per target, checked ads, inputs or backend error per target, seconds taken).

        Decoding and encoding happen in one call, in a worker thread (inline for one small lone ad: see
        `inline`). A target whose model cannot be described (backend down) gets its error, answered
        after the ads are checked, so bad input is a 4xx even then."""
        groups: dict[Target, list[int]] = {}
        for index, item in enumerate(raw):
            groups.setdefault(self.policy.target(item.ad_id), []).append(index)
        specs: dict[Target, ModelSpec | BackendError] = {}
        for target in groups:
            try:
                specs[target] = await self.spec(target.model, target.version, target.arm)
            except BackendError as error:
                specs[target] = error
        started = time.perf_counter()
        if self.inline(raw):
            ads, prepared = self._decode_and_encode(raw, groups, specs)
        else:
            ads, prepared = await asyncio.to_thread(self._decode_and_encode, raw, groups, specs)
        return groups, ads, prepared, time.perf_counter() - started

    def _decode_and_encode(self, raw: list[RawAd], groups: dict[Target, list[int]], specs: dict) -> tuple[list, dict]:
        sizes: list[int | None] = [None] * len(raw)  # each ad's JPEG decoded for its own model, as in its training
        for target, indexes in groups.items():
            if isinstance(specs[target], ModelSpec):
                for index in indexes:
                    sizes[index] = specs[target].image_size
        ads = decode_ads(raw, self.limits, sizes)
        prepared = {}
        for target, indexes in groups.items():
            spec = specs[target]
            prepared[target] = spec if isinstance(spec, BackendError) else \
                {spec.input_key: self.encoder.encode([ads[i] for i in indexes], spec)}
        return ads, prepared

    def _encode_for(self, ads: list[Ad], spec: ModelSpec) -> dict[str, np.ndarray]:
        """`spec`'s inputs; an ad decoded for another image size (a failed canary's, answered by the
        primary) is decoded again from its bytes, so every model sees the pixels it was trained on."""
        ads = [ad if ad.decoded_for == spec.image_size or ad.source is None
               else decode_ads([ad.source], self.limits, [spec.image_size])[0] for ad in ads]
        return self.encoder.encode(ads, spec)

    async def _infer_together(self, key: tuple, parts: list[dict]) -> list[dict]:
        """One backend call for the inputs of several requests; each gets its own rows back. `key`:
        (model, version, the backend that serves them)."""
        model, version, backend = key
        if len(parts) == 1:
            return [await backend.infer(model, version, parts[0])]
        outputs = await backend.infer(model, version, {name: np.concatenate([p[name] for p in parts])
                                                       for name in parts[0]})
        answers, start = [], 0
        for part in parts:
            end = start + len(part["input_ids"])
            answers.append({name: array[start:end] for name, array in outputs.items()})
            start = end
        return answers

    async def _write_together(self, _key, row_lists: list[list[dict]]) -> list[None]:
        """One commit for the rows of several requests; `alone` lets the log's strategy take its path for
        a lone audit (see the module's step 4)."""
        rows = [row for rows in row_lists for row in rows]
        await self.log.write_decisions(rows, alone=self.audits_in_flight <= 1)
        return [None] * len(row_lists)

    async def _answer(self, target: Target, ads: list[Ad], prepared: dict | BackendError | None = None):
        try:
            if isinstance(prepared, BackendError):
                raise prepared
            return target, await self.predict(target, ads, prepared)
        except BackendError as error:
            if target.arm == CANARY:
                self.metrics.errors.labels("canary_failed").inc()
                log.warning("canary %s failed, the primary answers: %s", target.model, error.message)
                return await self._answer(self.policy.primary, ads, None if prepared is error else prepared)
            raise ApiError(503, error.kind, error.message) from None

    # --- the audit path ---------------------------------------------------------------------
    async def audit(self, raw: list[RawAd], received: float, caller: str | None = None) -> list[dict]:
        self.audits_in_flight += 1
        try:
            return await self._audit(raw, received, caller)
        finally:
            self.audits_in_flight -= 1

    async def _audit(self, raw: list[RawAd], received: float, caller: str | None) -> list[dict]:
        policies = [self.policies.get(item.policy) for item in raw]  # an unknown name: 422 before any work
        groups, ads, prepared, decode_s = await self.prepare(raw)
        answered = await together(*(self._answer(t, [ads[i] for i in idx], prepared[t])
                                    for t, idx in groups.items()))
        results: list[dict | None] = [None] * len(ads)
        jobs: list[ShadowJob] = []
        rows, explains = [], []
        taxonomies = [None] * len(ads)
        for indexes, (target, (spec, answers, inputs, preprocess_s, inference_s)) in zip(groups.values(), answered):
            for position, (index, answer) in enumerate(zip(indexes, answers)):
                policy = self.policies.fitting(policies[index], spec.taxonomy)  # 422 if it names unknown classes
                decision = decide(answer.probabilities, policy.matcher.find(ads[index].text), policy.policy,
                                  spec.taxonomy)
                result = self._result(ads[index], spec, target.arm, answer, decision)
                results[index], taxonomies[index] = result, spec.taxonomy
                if raw[index].explain:
                    explains.append((result, target, spec, ads[index], select(inputs, position), answer, decision))
                if self._mirrors(spec):
                    jobs.append(self._job(result["request_id"], spec, answer, select(inputs, position), ads[index],
                                          decision, policies[index]))
                    result["shadowed"] = True
                result["timings"] = {"preprocess_ms": round((decode_s + preprocess_s) * 1000, 3),
                                     "inference_ms": round(inference_s * 1000, 3)}
        if explains:
            await together(*(self._explain(*job) for job in explains))
        total_ms = round((time.perf_counter() - received) * 1000, 3)
        for index, result in enumerate(results):
            result["timings"]["total_ms"] = total_ms
            sampled = result["suggestion"] != "review" and drawn_for_review(result["request_id"],
                                                                             self.settings.review_sample_rate)
            rows.append({**self._row(result, taxonomies[index]), "caller": caller, "review_sample": sampled})
            if (sampled or result["suggestion"] == "review") and self.settings.review_store_ads:  # the reviewer sees it
                rows[-1][REVIEW_ITEM] = review_item(raw[index].image, ads[index].text)
        await self._log(rows)
        for result, taxonomy in zip(results, taxonomies):
            for task, label in answer_labels(result, taxonomy).items():
                self.metrics.predictions.labels(result["model"], result["version"], task, label).inc()
            self.metrics.suggestions.labels(result["model"], result["version"], result["suggestion"]).inc()
            if taxonomy.rejects(result["verdict"]):
                self.metrics.rejections.labels(result["model"], result["version"]).inc()
        for job in jobs:
            self.shadow.offer(job)
        return results

    async def _explain(self, result: dict, target: Target, spec: ModelSpec, ad: Ad, row: dict, answer: Prediction,
                       decision: Decision) -> None:
        """`result["evidence"]` (evidence.py): the occluded variants as one batch, through the batching path, on
        the target (backend, model, version) that answered; a backend that fails meanwhile is a 503."""
        async def run(batch: dict) -> list[Prediction]:
            return (await self.predict(target, None, {spec.input_key: batch}))[1]
        try:
            result["evidence"] = await self.explainer.explain(run, ad, spec, row, answer, decision)
        except BackendError as error:
            raise ApiError(503, error.kind, error.message) from None

    def _mirrors(self, spec: ModelSpec) -> bool:
        shadow = self.policy.shadow
        if self.shadow is None or not self.policy.mirror():
            return False
        return not (shadow.model == spec.name and shadow.version in (None, spec.version))

    def _job(self, request_id: str, spec: ModelSpec, answer: Prediction, inputs: dict, ad: Ad, decision: Decision,
             audit_policy) -> ShadowJob:
        """The mirrored ad; the shadow's answer will be decided under the same policy and term hits, so the
        comparison is of what each model would have answered, not of raw argmax labels."""
        shadow = self.cached_spec(self.policy.shadow.model, self.policy.shadow.version, SHADOW)
        same_inputs = shadow is not None and shadow.input_key == spec.input_key
        hits = decision.term_hits

        def answer_as(prediction: Prediction, taxonomy) -> Prediction:
            """The shadow's answer under its own taxonomy, as the answer's fields (verdict, violation, ...)."""
            decided = decide(prediction.probabilities, hits, audit_policy.policy, taxonomy)
            return answer_fields(prediction.answered(decided.verdict, decided.violation, taxonomy), taxonomy)

        answered = answer_fields(answer.answered(decision.verdict, decision.violation, spec.taxonomy), spec.taxonomy)
        return ShadowJob(request_id, spec.name, spec.version, answered,
                         inputs, spec.input_key, None if same_inputs else ad.source, answer_as)

    async def _run_shadow(self, jobs: list[ShadowJob]) -> tuple[ModelSpec, list[Prediction]]:
        """The shadow model's answers for several mirrored ads, in one backend call: the answering model's
        inputs reused where the shadow takes the same shapes, the others decoded and encoded again."""
        shadow = self.policy.shadow
        spec = await self.spec(shadow.model, shadow.version, shadow.arm)
        again = [index for index, job in enumerate(jobs) if job.input_key != spec.input_key]
        encoded = {}
        if again:  # other shapes or tokenizer: decode and encode again, in one hop
            _, prepared = await asyncio.to_thread(self._decode_and_encode, [jobs[i].source for i in again],
                                                  {shadow: list(range(len(again)))}, {shadow: spec})
            encoded = {i: select(prepared[shadow][spec.input_key], row) for row, i in enumerate(again)}
        parts = [encoded.get(index, job.inputs) for index, job in enumerate(jobs)]
        inputs = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        spec, answers, *_ = await self.predict(shadow, None, {spec.input_key: inputs})
        return spec, answers

    @staticmethod
    def _result(ad: Ad, spec: ModelSpec, arm: str, answer: Prediction, decision: Decision) -> dict:
        """The answer: the decision's verdict and violation (each with the model's probability of it), the
        model's other labels, the suggestion, its reasons and term hits, and the policy that decided."""
        taxonomy = spec.taxonomy
        answered = answer.answered(decision.verdict, decision.violation, taxonomy)
        labels, scores = answered.labels, dict(answered.scores)
        return {"request_id": uuid.uuid4().hex, "ad_id": ad.ad_id,
                "verdict": decision.verdict, "verdict_score": scores[taxonomy.verdict_task],
                "violation": decision.violation, "violation_score": scores[taxonomy.reason_task],
                "attributes": {t: l for t, l in labels.items() if t in taxonomy.attributes},
                "scores": scores, "model": spec.name, "version": spec.version, "arm": arm, "shadowed": False,
                **decision.as_dict()}

    @staticmethod
    def _row(result: dict, taxonomy) -> dict:
        labels = answer_labels(result, taxonomy)
        return {"request_id": result["request_id"], "created_at": now(), "ad_id": result["ad_id"],
                "model": result["model"], "version": result["version"], "arm": result["arm"],
                "verdict": result["verdict"], "violation": result["violation"],
                "violation_score": result["violation_score"],
                "outputs": {"labels": labels, "scores": result["scores"], "term_hits": result["term_hits"],
                            ROLES: roles(taxonomy)},
                "latency_ms": result["timings"]["total_ms"], "shadowed": result["shadowed"],
                "suggestion": result["suggestion"], "policy_name": result["policy"]["name"],
                "policy_version": result["policy"]["version"], "reasons": result["reasons"]}

    async def _log(self, rows: list[dict]) -> None:
        try:
            await self.writes.submit("decisions", rows, len(rows))
        except Exception as error:  # no answer without its row: the client gets a 503 and retries
            log.error("decision log write failed for %d decisions (answered 503): %s", len(rows),
                      type(error).__name__)
            raise ApiError(503, "decision_log_unavailable", "the decision log cannot record the decision; "
                           "nothing was answered, retry shortly") from None

