"""`adaudit policy`: audit policies (docs/decisions.md). Errors end with one `error: ...` line and exit 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(no_args_is_help=True, help="Audit policies: thresholds and term lists that decide pass / "
                                             "review / block.")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(1)


@app.command("fit")
def fit(model: Annotated[Path, typer.Option(help="model folder (teacher or student)")],
        data: Annotated[Path, typer.Option(help="data set folder with validation.jsonl (test.jsonl is never read)")],
        out: Annotated[Path, typer.Option(help="the policy YAML to write; the curve PNG goes beside it")],
        target_precision: Annotated[float, typer.Option(
            help="precision automatic blocks and automatic passes must each reach")] = 0.99,
        name: Annotated[str, typer.Option(help="the fitted policy's name")] = "fitted",
        base: Annotated[Optional[Path], typer.Option(
            help="the policy whose term lists and classes to keep (default: the shipped default.yaml)")] = None,
        per_class: Annotated[bool, typer.Option(
            "--per-class", help="one block_at and review_at per violation class instead of one pair for all: "
                          "more ads decided where classes score differently (docs/decisions.md)")] = False):
    """Choose block_at and review_at on held-out ads so automatic decisions reach the target precision."""
    from adaudit.data.dataset import DatasetError
    from adaudit.decisions.policy import PolicyError
    from adaudit.models.modeling import ModelFolderError
    from adaudit.training.policy_fit import fit_policy

    if not 0.0 < target_precision < 1.0:
        fail(f"--target-precision {target_precision} is not between 0 and 1")
    try:
        result = fit_policy(model, data, target_precision, out, name, base, per_class)
    except (DatasetError, PolicyError, ModelFolderError, ValueError) as error:
        fail(str(error).splitlines()[0])
    chosen = result["fit"]
    print(json.dumps({key: chosen[key] for key in ("target_precision", "block_at", "review_at", "block_precision",
                                                   "pass_precision", "automation_rate")} | {"ads": result["ads"]}))
    print(f"policy written to {out} (curve: {result['plot']}): automation rate {chosen['automation_rate']:.4f} "
          f"at precision {target_precision} on {result['ads']} validation ads", file=sys.stderr)
