"""The gateway's Prometheus metrics, all prefixed `adaudit_`, in a registry of its own per app.

One process per pod: run uvicorn with one worker and scale with replicas (Kubernetes pods),
so every pod's `/metrics` is complete and Prometheus sums across pods. prometheus-client's
multiprocess mode is therefore not needed (and not enabled); with several workers in one
process group each worker would report only its own share.

    adaudit_request_duration_seconds{route, model, outcome}     histogram, end to end per HTTP request
    adaudit_inference_duration_seconds{model, version}          histogram, per request: its backend call(s),
                                                                including the wait to go in a batch
    adaudit_backend_batch_ads{model, version}                   histogram, ads per backend call (coalescing.py)
    adaudit_predictions_total{model, version, task, label}      counter, every answered ad and task (the model's
                                                                own task and class names, models/labels.py)
    adaudit_rejections_total{model, version}                    counter, answered ads whose verdict rejects (a
                                                                class of the taxonomy's reject_classes)
    adaudit_shadow_agreements_total{primary, primary_version, shadow, task}   counter, task: the answer's field
                                                                verdict|violation, whatever the taxonomy calls them
    adaudit_shadow_disagreements_total{primary, primary_version, shadow, task, primary_label, shadow_label}
    adaudit_shadow_comparisons_total{primary, primary_version, shadow}        counter, mirrored ads compared
    adaudit_shadow_queue_depth{primary, primary_version}        gauge, mirrored ads waiting in the one shadow queue
    adaudit_shadow_dropped_total{primary, primary_version}      counter, mirrored ads dropped (queue full)
    adaudit_reviewed_total{model, version, task, outcome}       counter, reviewer feedback: correct|incorrect
    adaudit_suggestions_total{model, version, suggestion}       counter, every answered ad: pass|review|block
    adaudit_reviewed_suggestions_total{model, version, suggestion, outcome}   counter, reviewer feedback with
                                                                a verdict (or violation) on an ad answered pass,
                                                                review or block: agreed|overruled (the reviewer's
                                                                verdict is the suggestion's: pass approves, block
                                                                rejects, review the model's lean)
    adaudit_errors_total{kind}                                  counter, every error answered (and shadow failures)
    adaudit_in_flight_requests                                  gauge
    adaudit_backend_ready{model}                                gauge, last readiness seen by /readyz (1 or 0)

In the shadow metrics `primary` and `primary_version` are the model and version that answered the
mirrored ad: the primary's, or the canary's for the canary arm (a canary version of the same model
is told apart by its version). Verdict agreement of canary version 2 with the teacher:
`sum(rate(adaudit_shadow_agreements_total{primary_version="2",task="verdict"}[5m]))
 / sum(rate(adaudit_shadow_comparisons_total{primary_version="2"}[5m]))`.

The review loop (issue 28): the automation rate, the share of answered ads decided without a reviewer,
`sum by (model, version) (rate(adaudit_suggestions_total{suggestion=~"pass|block"}[1h]))
 / sum by (model, version) (rate(adaudit_suggestions_total[1h]))` (the review rate: suggestion="review");
the reviewed precision of automatic blocks (passes alike), from the audited sample reviewers looked at:
`sum by (model, version) (rate(adaudit_reviewed_suggestions_total{suggestion="block",outcome="agreed"}[1d]))
 / sum by (model, version) (rate(adaudit_reviewed_suggestions_total{suggestion="block"}[1d]))`.

Reviewed accuracy per model for the canary comparison:
`sum by (model, version) (rate(adaudit_reviewed_total{task="verdict",outcome="correct"}[1h]))
 / sum by (model, version) (rate(adaudit_reviewed_total{task="verdict"}[1h]))`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from adaudit.models.labels import DEFAULT_TAXONOMY

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram("adaudit_request_duration_seconds", "End-to-end HTTP request latency",
                                         ["route", "model", "outcome"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_latency = Histogram("adaudit_inference_duration_seconds", "Backend inference latency per call",
                                           ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.backend_batch = Histogram("adaudit_backend_batch_ads", "Ads per backend call (gateway-side batching)",
                                       ["model", "version"], buckets=BATCH_BUCKETS, registry=r)
        self.predictions = Counter("adaudit_predictions", "Answered predictions by model and label",
                                   ["model", "version", "task", "label"], registry=r)
        answered = ["primary", "primary_version"]  # the model and version that answered the mirrored ad
        self.shadow_agreements = Counter("adaudit_shadow_agreements", "Shadow model agreed with the primary",
                                         answered + ["shadow", "task"], registry=r)
        self.shadow_disagreements = Counter(
            "adaudit_shadow_disagreements", "Shadow model disagreed with the primary, by label pair",
            answered + ["shadow", "task", "primary_label", "shadow_label"], registry=r)
        self.shadow_comparisons = Counter("adaudit_shadow_comparisons", "Mirrored ads compared",
                                          answered + ["shadow"], registry=r)
        self.shadow_queue_depth = Gauge("adaudit_shadow_queue_depth", "Mirrored ads waiting", answered, registry=r)
        self.shadow_dropped = Counter("adaudit_shadow_dropped", "Mirrored ads dropped: shadow queue full",
                                      answered, registry=r)
        self.reviewed = Counter("adaudit_reviewed", "Reviewer feedback compared with the logged decision",
                                ["model", "version", "task", "outcome"], registry=r)
        self.rejections = Counter("adaudit_rejections", "Answered ads whose verdict rejects, under the model's taxonomy",
                                  ["model", "version"], registry=r)
        self.suggestions = Counter("adaudit_suggestions", "Answered ads by audit suggestion (pass, review, block)",
                                   ["model", "version", "suggestion"], registry=r)
        self.reviewed_suggestions = Counter(
            "adaudit_reviewed_suggestions", "Reviewer verdicts on answered ads: agreed with the suggestion, or not",
            ["model", "version", "suggestion", "outcome"], registry=r)
        self.errors = Counter("adaudit_errors", "Errors by kind", ["kind"], registry=r)
        self.in_flight = Gauge("adaudit_in_flight_requests", "HTTP requests being served", registry=r)
        self.backend_ready = Gauge("adaudit_backend_ready", "Model readiness seen by /readyz", ["model"], registry=r)

    def count_review(self, decision: dict, labels: dict[str, str], taxonomy=None) -> None:
        """At feedback time: whether the reviewer rejects where the logged suggestion does (pass: approve, block:
        reject, review: the model's lean, its logged verdict), the reviewed precision of automatic decisions.
        The reviewer's verdict is their label of the taxonomy's verdict task, else what their reason label
        implies (the clean class: approve); feedback with neither, or on a row logged before suggestions, is
        not counted. `taxonomy`: the model's (models/labels.py; None: today's)."""
        taxonomy = taxonomy or DEFAULT_TAXONOMY
        suggestion = decision.get("suggestion")
        verdict, reason = labels.get(taxonomy.verdict_task), labels.get(taxonomy.reason_task)
        if suggestion is None or (verdict is None and reason is None):
            return
        rejected = taxonomy.rejects(verdict) if verdict is not None else reason != taxonomy.clean_class
        expected = {"pass": False, "block": True}.get(suggestion, taxonomy.rejects(decision.get("verdict")))
        self.reviewed_suggestions.labels(decision["model"], decision["version"], suggestion,
                                         "agreed" if rejected == expected else "overruled").inc()
