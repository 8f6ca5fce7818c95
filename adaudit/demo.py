"""`make run`: the whole system on one machine, from nothing to a gateway answering audits.

data -> tiny teacher -> AntGMM student (each built only if missing) -> Triton model repository
-> the bundled tritonserver (CPU) -> the FastAPI gateway on `port`, mirroring a quarter of the
traffic to the teacher. Ctrl-C stops the gateway, then Triton.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from adaudit.compression.pipeline import compress
from adaudit.compression.recipe import DEMO_RECIPE
from adaudit.data.generator import make_dataset
from adaudit.export.repository import ServingSettings, export_model
from adaudit.export.server import TritonServer
from adaudit.training.teacher import train_teacher

TRITON_PORTS = (8000, 8001, 8002)
# enough ads and epochs that the demo student's answers mean something, while `make run` is ready within five
# minutes on two cores: the teacher's epochs are most of that time, and with 15 (rather than 20, which miss the
# five minutes) the student still kept over 90% verdict accuracy on the validation split (the figures are in the
# commit that chose them, and printed by the demo). Half as many recombined pairs as training ads (copy over another ad's picture,
# docs/compression.md) teach the tiny teacher the image-text mismatches it otherwise misses, and the demo
# recipe's distillation on every training ad keeps them in the student
DEMO_ADS, DEMO_EPOCHS, DEMO_RECOMBINED = 4000, 15, 0.5


def build_models(workdir: Path, log) -> tuple[Path, Path, Path]:
    data, teacher, student = workdir / "data", workdir / "teacher", workdir / "student"
    if not (data / "train.jsonl").exists():
        log(f"rendering {DEMO_ADS:,} ads")
        make_dataset(data, n=DEMO_ADS, seed=0)
    if not (teacher / "config.json").exists():
        log("training the tiny teacher")
        train_teacher(data, teacher, "tiny", epochs=DEMO_EPOCHS, recombined=DEMO_RECOMBINED, resume=True, log=log)
    if not (student / "report.json").exists():
        log("compressing it (AntGMM, demo recipe)")
        compress(teacher, data, student, DEMO_RECIPE, log=log)
    return data, teacher, student


def quality(student: Path) -> str:
    """How far to trust the demo's answers: its student and teacher on their test split (report.json), so a
    newcomer reads a sample answer knowing the model behind it is a few minutes' training, not the benchmark's."""
    report = json.loads((student / "report.json").read_text())
    figures = {name: f"verdict accuracy {100 * report[name]['accuracy']:.1f}%, violation macro-F1 "
                     f"{100 * report[name]['violation_macro_f1']:.1f}%" for name in ("student", "teacher")}
    return (f"The demo student on its test split: {figures['student']} (its tiny teacher: {figures['teacher']}; "
            "the benchmark's models: README).")


def curl_example(data: Path, port: int) -> str:
    ad = json.loads((data / "test.jsonl").read_text(encoding="utf-8").splitlines()[0])
    return (f"curl -s -F image=@{shlex.quote(str(data / ad['image']))} -F text={shlex.quote(ad['text'])} "
            f"http://127.0.0.1:{port}/v1/audits")


def run_demo(workdir: Path, port: int, log=print) -> None:
    import uvicorn

    from adaudit.service.app import create_app
    from adaudit.service.settings import GatewaySettings

    workdir = Path(workdir)
    data, teacher, student = build_models(workdir, log)
    repository = workdir / "repository"
    for name, folder in (("student", student), ("teacher", teacher)):
        # ONNX Runtime (the CPU default), one thread each: the two models share the cores
        export_model(folder, repository, name, 1, ServingSettings(threads=1))
    http, grpc, metrics = TRITON_PORTS
    log(f"starting tritonserver on ports {http} (HTTP), {grpc} (gRPC), {metrics} (metrics)")
    with TritonServer(repository, http, grpc, metrics, log_file=workdir / "triton.log"):
        settings = GatewaySettings(backend="triton", triton_protocol="http", triton_url=f"127.0.0.1:{http}",
                                   model_repository=repository,
                                   shadow_fraction=0.25,
                                   database_url=f"sqlite:///{(workdir / 'decisions.db').resolve()}")
        log(f"gateway on http://127.0.0.1:{port} (docs at /docs, reviewer console at /console, metrics at "
            f"/metrics). {quality(student)} Audit a sample ad:\n\n"
            f"  {curl_example(data, port)}\n\nCtrl-C stops everything.")
        uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    log("stopped")
