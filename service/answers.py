"""The audit answers as JSON: checked against their schema and written by pydantic in one step.

The audit routes return `json_answer(AUDIT_RESULT or BATCH_RESPONSE, value)` instead of letting
FastAPI's response_model path encode them. Why: that path validates the answer into Python
objects, turns them back into plain ones (`jsonable_encoder`) and only then into JSON, a cost
paid on every audit; a pydantic `TypeAdapter` checks and writes the JSON in one pass, in Rust,
to the same document (a NaN score becomes null, as FastAPI's would). The figures are in
benchmarks/results/serving-history.md. The routes keep `response_model` for the OpenAPI docs;
FastAPI returns a `Response` as it is.
"""

from __future__ import annotations

from fastapi import Response
from pydantic import TypeAdapter

from .schemas import AuditResult, BatchResponse

AUDIT_RESULT, BATCH_RESPONSE = TypeAdapter(AuditResult), TypeAdapter(BatchResponse)


def json_answer(schema: TypeAdapter, value) -> Response:
    """`value` checked against `schema` and written as JSON."""
    return Response(schema.dump_json(schema.validate_python(value)), media_type="application/json")
