"""adaudit.service: the FastAPI audit gateway in front of Triton (or the model in-process).

    app.py            create_app(settings) -> FastAPI: routers, error handlers, middleware, lifespan
    settings.py       GatewaySettings: ADAUDIT_* environment variables and an optional YAML file
    routes_*.py       the HTTP routes: audits, reviews, operations (health, readiness, metrics)
    bodies.py         reading request bodies: size limit, content type, JSON, multipart
    intake.py         checking ads: image decoding with limits, text validation (bad input -> 4xx)
    encoding.py       model inputs via models/preprocessing.AuditProcessor; logits -> labels
    backends.py       TritonBackend (over a Triton transport, asyncio) and EmbeddedBackend (torch in-process)
    triton_transport.py  the Triton transport interface: metadata, config, infer, ready, close
    triton_http.py    the HTTP transport: keep-alive HTTP/1.1 connections (the bodies are tritonclient's)
    triton_grpc.py    the gRPC transport: tritonclient's asyncio gRPC client
    gateway.py        the audit path: policy, inference, decision log, shadow offer
    policy.py         canary / A-B arm (sticky per ad id) and shadow sampling
    shadow.py         the bounded shadow queue, its workers and the comparison
    decision_log.py   decisions, feedback, shadow disagreements, reviewed accuracy; the decision writer
                      per database (SQLite, PostgreSQL)
    tables.py         the decision log's SQLAlchemy tables, declared once
    schema.py         their Alembic migrations (migrations/): upgrade, check, adopt a pre-migration log
    answers.py        the audit answers' JSON (pydantic, one pass)
    metrics.py        the adaudit_* Prometheus metrics (one process per pod)
    middleware.py     in-flight gauge, request latency, last-resort 503 guard
    admission.py      the in-flight limit: over max_in_flight, an immediate 503 `overloaded`
    security.py       API keys (stored as SHA-256 digests), the caller's name, per-caller rate limits
    errors.py         ApiError and the JSON error handlers
"""
