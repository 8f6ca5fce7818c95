"""The `adaudit` command line. Errors end with one readable line on stderr and exit code 1."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Ad-audit model compression: data, teacher, AntGMM compression, evaluation.")
data_app = typer.Typer(no_args_is_help=True, help="MAAD-like ad data sets.")
teacher_app = typer.Typer(no_args_is_help=True, help="The teacher model.")
app.add_typer(data_app, name="data")
app.add_typer(teacher_app, name="teacher")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def readable_errors(command):
    """Turn the project's own input errors into one line on stderr and exit code 1."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from adaudit.data.dataset import DatasetError
        from adaudit.models.configuration import ConfigError
        from adaudit.models.modeling import ModelFolderError
        from adaudit.compression.recipe import RecipeError

        try:
            return command(*args, **kwargs)
        except (DatasetError, ConfigError, ModelFolderError, RecipeError, FileExistsError) as error:
            log(f"error: {error}")
            raise typer.Exit(1) from None
    return wrapper


@data_app.command("make")
@readable_errors
def data_make(out: Annotated[Path, typer.Option(help="folder to create")],
              n: Annotated[int, typer.Option(min=10, help="number of ads")] = 6000,
              seed: Annotated[int, typer.Option()] = 0,
              test_fraction: Annotated[float, typer.Option(min=0.05, max=0.5)] = 0.2):
    """Render a MAAD-like data set: images, Chinese copy and labels (train.jsonl, test.jsonl)."""
    from adaudit.data.generator import make_dataset

    summary = make_dataset(out, n=n, seed=seed, test_fraction=test_fraction)
    print(json.dumps(summary, indent=2, ensure_ascii=False))


@teacher_app.command("train")
@readable_errors
def teacher_train(data: Annotated[Path, typer.Option(help="data set folder")],
                  out: Annotated[Path, typer.Option(help="teacher folder to write")],
                  preset: Annotated[str, typer.Option(help="tiny (seconds, for tests), small or base")] = "base",
                  epochs: Annotated[Optional[int], typer.Option(min=1, help="override the preset's epochs")] = None,
                  resume: Annotated[bool, typer.Option(help="continue from OUT.checkpoint")] = False,
                  seed: Annotated[int, typer.Option()] = 0,
                  modality: Annotated[str, typer.Option(help="both; text or image for a single-modality ablation")] = "both"):
    """Train the teacher on the labels; checkpoints every epoch, resumable."""
    from adaudit.teacher import MODALITIES, summary, train_teacher

    if modality not in MODALITIES:
        log(f"error: --modality must be one of {', '.join(MODALITIES)}")
        raise typer.Exit(1)
    metrics = train_teacher(data, out, preset, epochs=epochs, resume=resume, seed=seed, modality=modality, log=log)
    log(f"teacher written to {out}: {summary(metrics['test'])}")


@app.command()
@readable_errors
def compress(teacher: Annotated[Path, typer.Option(help="teacher folder")],
             data: Annotated[Path, typer.Option(help="data set folder")],
             out: Annotated[Path, typer.Option(help="student folder to write")],
             recipe: Annotated[Optional[Path], typer.Option(help="recipe YAML (default: the AntGMM recipe)")] = None):
    """Prune and distil the teacher into a student, stage by stage; writes OUT/report.json."""
    from adaudit.compression.pipeline import compress as run

    report = run(teacher, data, out, recipe, log=log)
    log(f"student written to {out}: {report['compression_ratio']:.1f}x fewer parameters, "
        f"{report['speedup']:.1f}x lower batch-1 latency, verdict accuracy "
        f"{report['teacher']['accuracy']:.4f} -> {report['student']['accuracy']:.4f}, "
        f"in {report['wall_seconds'] / 60:.1f} min")


@app.command("eval")
@readable_errors
def evaluate_model(model: Annotated[Path, typer.Option(help="model folder (teacher or student)")],
                   data: Annotated[Path, typer.Option(help="data set folder")],
                   split: Annotated[str, typer.Option(help="train or test")] = "test"):
    """Print a model's size, speed and audit metrics on a split as JSON."""
    from adaudit.data.encoding import encode_split
    from adaudit.evaluation import evaluate
    from adaudit.measure import profile
    from adaudit.models.modeling import AuditModel
    from adaudit.models.preprocessing import AuditProcessor

    audit_model = AuditModel.from_pretrained(model)
    processor = AuditProcessor.from_folder(audit_model.config, model)
    encoded = encode_split(data, split, processor, audit_model.config.tasks)
    print(json.dumps({**profile(audit_model, encoded), **evaluate(audit_model, encoded)}, indent=2))


if __name__ == "__main__":
    app()
