"""Training the teacher: the large audit model that compression starts from.

The teacher trains on the labels with cross-entropy, saves a checkpoint after every epoch
to `OUT.checkpoint/` (resume with `resume=True`), and writes its folder atomically at the
end (under torchrun: rank 0 alone, training/distributed.py), with `metrics.json` holding its scores on the held-out test split (the reported figures) and,
when the data set has one, on its validation split (what choices are made on). On that validation
split each task's temperature is fitted (training/calibration.py) and stored in the teacher's
config; metrics.json records the calibration error before and after, beside `reliability.png`.

The teacher predicts the data set's own taxonomy (DIR/labels.yaml, models/labels.py; today's when the
folder has none): its config carries the tasks and their roles, and compression, export and the
gateway read them from there.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from adaudit.data.dataset import data_checksum, data_taxonomy, read_split
from adaudit.data.encoding import EncodedSplit, encode_split, encode_validation
from adaudit.data.recombination import makes_pairs, recombined_pairs
from adaudit.training.calibration import (NO_VALIDATION, Calibration, fit_calibration, plot_reliability, skipped,
                                         summary as calibration_summary)
from adaudit.training.evaluation import evaluate
from adaudit.core.files import atomic_write_text
from adaudit.models.configuration import TOWERS, ConfigError
from adaudit.models.labels import DEFAULT_TAXONOMY, Taxonomy
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor
from .averaging import UNAVERAGED_FOLDER, WeightAverage
from .presets import preset
from .real_copy import makes_rows as makes_real_copy_rows, real_copy_rows
from .reframing import Reframing
from .distributed import World, joined, per_rank_batch
from .loop import TrainingState, fit, label_loss, load_checkpoint, save_checkpoint

MODALITIES = ("both", "text", "image")
METRICS_FILE = "metrics.json"


def checkpoint_folder(out: Path) -> Path:
    return out.with_name(out.name + ".checkpoint")


def blank_modality(split: EncodedSplit, keep: str, processor: AuditProcessor) -> EncodedSplit:
    """The split as a single-modality model sees it: keep='text' greys every image, keep='image' empties the copy."""
    if keep == "text":
        return replace(split, image_bytes=torch.full_like(split.image_bytes, 128))
    if keep == "image":
        input_ids, attention_mask = processor.texts([""] * len(split))
        return replace(split, input_ids=input_ids, attention_mask=attention_mask)
    return split


def validation_split(data_dir: Path, processor: AuditProcessor, tasks: dict, modality: str) -> EncodedSplit | None:
    """The data set's validation split (what choices are made on) as this teacher reads it, or None."""
    split = encode_validation(data_dir, processor, tasks)
    return None if split is None else blank_modality(split, modality, processor)


def calibrate_teacher(model: AuditModel, validation: EncodedSplit | None, test: EncodedSplit,
                      log) -> tuple[Calibration | None, dict]:
    """Temperatures fitted on the validation split and stored in the model's config, and the "calibration"
    entry of metrics.json; without a validation split none are fitted (the test split never chooses them)."""
    if validation is None:
        log(f"calibration skipped: {NO_VALIDATION}")
        return None, skipped(NO_VALIDATION)
    calibration = fit_calibration(model, validation, test)
    calibration.apply(model)
    log(f"calibration (fitted on {len(validation)} validation ads): {calibration_summary(calibration.record)}")
    return calibration, {"calibration": calibration.record}


def write_teacher(model: AuditModel, out: Path, metrics: dict, calibration: Calibration | None,
                  unaveraged: AuditModel | None = None) -> None:
    """The teacher folder, its last step's weights when the teacher is a weight average (`unaveraged/`), its
    reliability diagram (when calibrated) and metrics.json last, so a folder with metrics.json is complete."""
    model.save_pretrained(out)
    if unaveraged is not None:
        unaveraged.save_pretrained(out / UNAVERAGED_FOLDER)
    if calibration is not None:
        plot_reliability(calibration, out, f"teacher '{metrics['preset']}': temperature scaling")
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")


def new_teacher(preset_name: str, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> AuditModel:
    """A fresh teacher of the preset, predicting `taxonomy`'s tasks."""
    return with_taxonomy(preset(preset_name).new_model(), taxonomy)


def with_taxonomy(model: AuditModel, taxonomy: Taxonomy) -> AuditModel:
    """`model` predicting `taxonomy`: the same towers and weights (a pretrained preset's kept), heads for its
    tasks; the model itself when it already predicts it."""
    if model.config.taxonomy == taxonomy:
        return model
    retargeted = AuditModel(model.config.with_taxonomy(taxonomy))
    shapes = {name: tensor.shape for name, tensor in retargeted.state_dict().items()}
    kept = {name: tensor for name, tensor in model.state_dict().items()
            if name in shapes and shapes[name] == tensor.shape and not name.startswith(("heads.", "image_heads.",
                                                                                          "agreement_heads."))}
    retargeted.load_state_dict(kept, strict=False)
    retargeted.tokenizer = model.tokenizer
    return retargeted


def freeze_lower_blocks(model: AuditModel, blocks: int) -> int:
    """Keep the pretrained towers' embeddings and lowest `blocks` blocks fixed; returns the parameters frozen."""
    frozen = [model.vision.embeddings, model.text.embeddings.word_embeddings]
    frozen += [model.blocks(tower)[i] for tower in ("vision", "text") for i in range(blocks)]
    count = 0
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
            count += parameter.numel()
    return count


def train_teacher(data_dir: Path, out: Path, preset_name: str, epochs: int | None = None,
                  resume: bool = False, seed: int = 0, limit: int | None = None, modality: str = "both",
                  frozen_blocks: int | None = None, recombined: float | None = None, log=print,
                  device: str | None = "auto", fsdp: bool = False,
                  gradient_checkpointing: tuple[str, ...] = (), real_copy: float | None = None,
                  reframed: float | None = None, weight_average: float | None = None) -> dict | None:
    """Train a teacher; `modality` text or image trains a single-modality ablation instead; `frozen_blocks`
    (presets with pretrained towers; default: the preset's): the lower blocks of each pretrained tower kept
    fixed; `recombined` (default: the preset's): labelled rows of one ad's copy over another ad's picture
    added to the training ads, as a fraction of them (only when both modalities are read); `real_copy` (default:
    the preset's): rows whose copy holds a clause of real writing (training/real_copy.py), the same way; `reframed`
    (default: the preset's): the share of each batch's pictures re-framed (training/reframing.py);
    `weight_average` (default: the preset's; 0: none): the decay of the moving average of the weights written as
    the teacher (training/averaging.py). `device`:
    training/device.py. Under torchrun every rank trains (DDP, or FSDP2 with `fsdp`) and rank 0 alone logs,
    evaluates and writes: it returns the metrics, the other ranks None. `gradient_checkpointing`: the towers
    whose activations are recomputed in backward (less memory)."""
    started = time.perf_counter()
    out = Path(out)
    row = preset(preset_name)  # a readable ConfigError for an unknown name
    schedule = replace(row.schedule, seed=seed, **({"epochs": epochs} if epochs else {}))
    per_rank_batch(schedule.batch_size, int(os.environ.get("WORLD_SIZE", "1")))  # refused before any work
    unknown = sorted(set(gradient_checkpointing) - set(TOWERS))
    if unknown:
        raise ConfigError(f"gradient checkpointing names no tower {', '.join(unknown)}: choose among "
                         f"{', '.join(TOWERS)}")
    with joined(device, fsdp) as world:
        log = log if world.main else (lambda message: None)
        return run_teacher(data_dir, out, row, schedule, world, resume, limit, modality, frozen_blocks,
                           recombined, log, started, gradient_checkpointing, real_copy, reframed, weight_average)


def load_or_new_teacher(checkpoint: Path, resume: bool, preset_name: str, seed: int, recombined: float, log,
                        taxonomy: Taxonomy = DEFAULT_TAXONOMY, real_copy: float = 0.0):
    """(model, optimizer state, training state, recombined fraction, real-copy fraction, weight average's
    tensors or None): from the checkpoint when resuming."""
    if resume and checkpoint.exists():
        model, optimizer_state, state, meta = load_checkpoint(checkpoint)
        if model.config.taxonomy != taxonomy:
            raise ConfigError(f"the checkpoint {checkpoint} predicts other tasks or classes than the data set's "
                              "labels.yaml: train afresh (without --resume) or use the data set it started on")
        # the rows the run started with (a checkpoint from before recombined pairs: none), so that the
        # epochs left cover the same rows and the learning-rate schedule the same steps
        recombined, real_copy = meta.get("recombined", 0.0), meta.get("real_copy", 0.0)
        log(f"resuming from {checkpoint} after epoch {state.epoch} (recombined {recombined}, real copy {real_copy})")
        return model, optimizer_state, state, recombined, real_copy, meta["average"]
    torch.manual_seed(seed)
    return new_teacher(preset_name, taxonomy), None, TrainingState(), recombined, real_copy, None


def run_teacher(data_dir: Path, out: Path, row, schedule, world: World, resume: bool, limit: int | None,
                modality: str, frozen_blocks: int | None, recombined: float | None, log, started: float,
                gradient_checkpointing: tuple[str, ...] = (), real_copy: float | None = None,
                reframed: float | None = None, weight_average: float | None = None):
    """train_teacher's work on one rank: the data, the loop, and (rank 0) the evaluation and the folder."""
    checkpoint = checkpoint_folder(out)
    taxonomy = data_taxonomy(data_dir)  # the data set's labels.yaml, refused before any work if it is broken
    recombined = row.recombined if recombined is None else recombined
    if recombined < 0:
        raise ValueError(f"recombined must be 0 or more, got {recombined}")
    recombined = recombined if modality == "both" else 0.0  # a single-modality ablation cannot see a mismatch
    if recombined and not makes_pairs(taxonomy):
        log("no recombined pairs: the data set's taxonomy names no mismatch class and industry task to label them")
        recombined = 0.0
    real_copy = row.real_copy if real_copy is None else real_copy
    if real_copy < 0:
        raise ValueError(f"real_copy must be 0 or more, got {real_copy}")
    real_copy = real_copy if modality != "image" else 0.0  # an image-only ablation never reads the copy
    if real_copy and not makes_real_copy_rows(taxonomy):
        log("no real-copy rows: the data set has its own labels.yaml, which says nothing of what real writing is")
        real_copy = 0.0
    reframed = row.reframed if reframed is None else reframed
    if not 0 <= reframed <= 1:
        raise ValueError(f"reframed must be between 0 and 1, got {reframed}")
    reframed = reframed if modality != "text" else 0.0  # a text-only ablation's pictures are all grey
    weight_average = row.weight_average if weight_average is None else weight_average
    if not 0 <= weight_average < 1:
        raise ValueError(f"weight_average (a decay) must be 0 (none) or between 0 and 1, got {weight_average}")
    if weight_average and world.fsdp:
        raise ConfigError("a weight average is not kept under FSDP (its shards would need gathering every step): "
                          "drop --fsdp or --weight-average")
    model, optimizer_state, state, recombined, real_copy, average_state = load_or_new_teacher(
        checkpoint, resume, row.name, schedule.seed, recombined, log, taxonomy, real_copy)
    if weight_average and state.epoch and average_state is None:
        log("the checkpoint holds no weight average: the average starts from its weights")
    average = WeightAverage(weight_average, average_state) if weight_average else None
    frozen_blocks = row.frozen_blocks if frozen_blocks is None else frozen_blocks
    if row.pretrained:
        frozen = freeze_lower_blocks(model, frozen_blocks)
        log(f"pretrained towers: {frozen / 1e6:.2f}M parameters frozen (embeddings and lowest {frozen_blocks} blocks)")
    model.checkpoint_gradients(gradient_checkpointing)
    log(f"{model.num_parameters() / 1e6:.2f}M parameters, on {world.device}"
        + (f", {world.world_size} ranks ({world.backend}{', FSDP2' if world.fsdp else ''})" if world.distributed
           else "") + (f"; gradient checkpointing in {', '.join(gradient_checkpointing)}" if gradient_checkpointing
                       else ""))
    config = model.config
    processor = AuditProcessor(config, model.tokenizer)
    train = encode_split(data_dir, "train", processor, config.tasks, limit)
    pairs = recombined_pairs(train, round(recombined * len(train)), seed=schedule.seed, taxonomy=taxonomy)
    real = (real_copy_rows(train, {record.id: record.text for record in read_split(data_dir, "train")},
                           round(real_copy * len(train)), processor, seed=schedule.seed, taxonomy=taxonomy)
            if real_copy else train.subset(torch.zeros(0, dtype=torch.long)))
    added = len(pairs) + len(real)
    train = blank_modality(train.joined(pairs).joined(real), modality, processor)
    test = blank_modality(encode_split(data_dir, "test", processor, config.tasks), modality, processor)
    log(f"teacher '{row.name}': {len(train) - added} training ads + {len(pairs)} recombined + {len(real)} real copy, "
        f"{len(test)} test ads" + (f"; {reframed:.0%} of each batch's pictures re-framed" if reframed else ""))

    def save_progress(model, optimizer, state, loss):
        whole, optimizer_state = world.unsharded(model, optimizer)  # every rank takes part under FSDP
        if world.main:  # rank 0 alone writes; every rank holds the same weights (or, under FSDP, a shard)
            save_checkpoint(checkpoint, whole, optimizer_state, state,
                            {"preset": row.name, "recombined": recombined, "real_copy": real_copy},
                            average.tensors() if average is not None else None)
        log(f"epoch {state.epoch}/{schedule.epochs}: training loss {loss:.4f}, checkpoint saved")

    # fresh draws on every rank (each re-frames its own rows) and on every resumed epoch
    pictures = Reframing(reframed, seed=(schedule.seed * 1000 + state.epoch) * 64 + world.rank) if reframed else None
    losses = fit(model, len(train), lambda m, index: label_loss(m, train, index, pictures), schedule,
                 f"teacher {row.name}", state, optimizer_state, on_epoch_end=save_progress, world=world,
                 average=average)
    model, _ = world.unsharded(model)  # under FSDP, the whole teacher gathered to rank 0
    if not world.main:
        return None
    unaveraged = None
    if average is not None:  # the last step's weights kept beside the average, measured on the same splits
        unaveraged = copy.deepcopy(model).cpu().eval()
        average.copy_into(model)
    validation = validation_split(data_dir, processor, config.tasks, modality)
    calibration, calibration_entry = calibrate_teacher(model, validation, test, log)
    metrics = {"preset": row.name, "modality": modality, "epochs": schedule.epochs, "seed": schedule.seed,
               "data_checksum": data_checksum(data_dir), "train_loss": losses,
               "test": evaluate(model, test), "train_samples": len(train),
               **({} if validation is None else {"validation": evaluate(model, validation)}),
               **calibration_entry,
               "frozen_blocks": frozen_blocks if row.pretrained else 0,
               "recombined": recombined, "recombined_rows": len(pairs),
               "real_copy": real_copy, "real_copy_rows": len(real), "reframed": reframed,
               "weight_average": weight_average,
               **({} if unaveraged is None else {"unaveraged": {
                   "test": evaluate(unaveraged, test),
                   **({} if validation is None else {"validation": evaluate(unaveraged, validation)})}}),
               "distributed": world.record(),
               "wall_seconds": time.perf_counter() - started}
    write_teacher(model.cpu(), out, metrics, calibration, unaveraged)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return metrics


def summary(metrics: dict) -> str:
    return (f"verdict accuracy {metrics['accuracy']:.4f}, violation macro-F1 {metrics['violation_macro_f1']:.4f}, "
            + ", ".join(f"{task} {value:.3f}" for task, value in metrics["task_accuracy"].items()
                        if task not in ("verdict",)))

