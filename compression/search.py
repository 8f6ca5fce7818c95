"""Per-layer pruning policy search from a few samples (SlimLLaVA, published as EfficientLLaVA, CVPR 2025).

A *policy* says, per tower, which of the teacher's blocks stay and how many heads, FFN neurons
and (Q-Former) image-attention heads each kept block keeps. An evolutionary search looks for the
policy with the best fitness among those whose student fits a latency budget:

    fitness(policy) = -loss(policy) - eta * complexity(policy) / sqrt(n)

- loss: the distillation loss (distillation.py) of the one-shot pruned candidate on the n search
  samples (64 training ads): the teacher cut to the policy, keeping the units of highest Taylor
  importance (importance.py), with no fine-tuning.
- complexity: the structural-risk term. Norm-based bounds on the Rademacher complexity of a
  network (Neyshabur, Tomioka and Srebro 2015; Golowich, Rakhlin and Shamir 2018) grow with the
  Frobenius norms of its weight matrices and shrink as 1/sqrt(n). SlimLLaVA adds such a term so
  that a policy chosen from 64 samples does not overfit them. We use the *Frobenius* norm of
  every kept weight matrix of the blocks, summed in squares (residual blocks add, so the sum
  replaces the product over layers of the feed-forward bound), relative to the teacher's:
  complexity = sqrt(sum ||W_kept||_F^2) / sqrt(sum ||W_teacher||_F^2), in (0, 1].
  eta is `search.generalization_weight` in the recipe (0 turns the term off).
- between generations the projector and the Q-Former query tokens, which every candidate shares,
  are tuned for a few steps on the search samples through the best candidate (SlimLLaVA's
  "evolving search space": later candidates are scored with a projector that suits pruned towers).
- the budget is checked with a latency model calibrated on this machine: batch-1 latency of
  randomly shaped students at the recipe's final hidden sizes, fitted as a non-negative linear
  function of blocks, heads and FFN neurons per tower (LatencyModel).

The chosen policy becomes the recipe's blocks and widths stages (`policy_recipe`), which the
normal stages then distil; `adaudit compress --recipe auto --target-speedup X` does both.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import nnls

from adaudit.data.encoding import EncodedSplit
from adaudit.training.evaluation import predict_logits
from adaudit.training.measure import latency
from adaudit.models.configuration import TOWERS, AuditModelConfig, BlockShape
from adaudit.models.modeling import AuditModel

from .distillation import TeacherCache, cache_teacher, distillation_loss, mean_distillation_loss
from .importance import block_influence, taylor_unit_scores, top_indices
from .recipe import BlocksStage, HiddenStage, Recipe, SearchSettings, WidthsStage
from .structure import BLOCK_PARAMETER, attention, cross_attention, cut, ffn, head_channels



@dataclass(frozen=True)
class KeptBlock:
    """One block a policy keeps: which of the teacher's blocks, and the widths it keeps of it."""
    teacher_index: int  # the teacher's block number
    heads: int
    intermediate_size: int  # FFN neurons
    cross_attention_heads: int = 0  # Q-Former image-attention heads (0: a block without them)

    @classmethod
    def of(cls, entry: "KeptBlock | list[int]") -> "KeptBlock":
        """From a KeptBlock or its report form [teacher block, heads, FFN neurons, image-attention heads]."""
        return entry if isinstance(entry, KeptBlock) else cls(*entry)

    def as_list(self) -> list[int]:
        """The report's (and `policy_key`'s) form."""
        return [self.teacher_index, self.heads, self.intermediate_size, self.cross_attention_heads]

    @property
    def shape(self) -> BlockShape:
        return BlockShape(self.heads, self.intermediate_size, self.cross_attention_heads)


# A policy: tower -> its kept blocks, in teacher order. report.json writes each as a list (`policy_lists`),
# and the functions that take a policy from outside (`policy_config`, `policy_recipe`, `one_shot`) accept
# that form too (`as_policy`).
Policy = dict[str, list[KeptBlock]]


def as_policy(policy: dict[str, list]) -> Policy:
    return {tower: [KeptBlock.of(entry) for entry in blocks] for tower, blocks in policy.items()}


def policy_lists(policy: Policy) -> dict[str, list[list[int]]]:
    return {tower: [block.as_list() for block in blocks] for tower, blocks in policy.items()}


def policy_key(policy: Policy) -> str:
    return json.dumps(policy_lists(policy), sort_keys=True)


def policy_config(config: AuditModelConfig, policy: Policy, hidden_sizes: dict[str, int] | None = None) -> AuditModelConfig:
    """The config of a student shaped by `policy` (and, for timing, the final hidden sizes)."""
    config = copy.deepcopy(config)
    for tower, blocks in as_policy(policy).items():
        config.tower(tower).blocks = [block.shape for block in blocks]
    for tower, size in (hidden_sizes or {}).items():
        config.tower(tower).hidden_size = size
    return config


def final_hidden_sizes(recipe: Recipe) -> dict[str, int]:
    sizes = {}
    for stage in recipe.stages:
        if isinstance(stage, HiddenStage):
            sizes.update(stage.size)
    return sizes


# --- the latency model ------------------------------------------------------------------------
def latency_features(config: AuditModelConfig) -> np.ndarray:
    """[1, blocks, heads, FFN neurons per tower, Q-Former image-attention heads]."""
    blocks = [config.tower(t).blocks for t in TOWERS]
    return np.array([1.0, *(len(b) for b in blocks), *(sum(s.heads for s in b) for b in blocks),
                     *(sum(s.intermediate_size for s in b) for b in blocks),
                     sum(s.cross_attention_heads for s in config.qformer.blocks)], dtype=float)


def time_config(config: AuditModelConfig, split: EncodedSplit) -> float:
    """Measured batch-1 p50 of a fresh model of `config` (random weights: latency does not depend on them)."""
    return latency(AuditModel(config), split, repeats=25, throughput_repeats=0)["latency_ms_p50"]


@dataclass
class LatencyModel:
    """Batch-1 milliseconds as a non-negative linear function of `latency_features`."""
    coefficients: list[float]
    fit: dict  # r2 and mean relative error on the calibration and on held-out students
    timed: list = field(default_factory=list)  # [features..., measured ms] of every student timed

    def predict(self, config: AuditModelConfig) -> float:
        return float(latency_features(config) @ np.array(self.coefficients))

    def learn(self, config: AuditModelConfig, measured_ms: float) -> None:
        """Add a timed student and refit: the search times its elites, so the model is corrected
        where the search actually looks (a linear fit on random shapes misjudges its corners)."""
        self.timed.append([*latency_features(config).tolist(), measured_ms])
        data = np.array(self.timed)
        self.coefficients = nnls(data[:, :-1], data[:, -1])[0].tolist()

    @classmethod
    def calibrate(cls, configs: list[AuditModelConfig], split: EncodedSplit, log=print) -> "LatencyModel":
        """Time a fresh model of each config (random weights: latency does not depend on them);
        fit on three quarters, report the error on the rest."""
        features, measured = [], []
        for number, config in enumerate(configs, 1):
            features.append(latency_features(config))
            measured.append(time_config(config, split))
            if number % 8 == 0:
                log(f"  latency model: timed {number}/{len(configs)} students")
        features, measured = np.array(features), np.array(measured)
        fitted = len(configs) * 3 // 4
        coefficients, _ = nnls(features[:fitted], measured[:fitted])

        def quality(rows):
            predicted = features[rows] @ coefficients
            residual = ((measured[rows] - predicted) ** 2).sum()
            total = ((measured[rows] - measured[rows].mean()) ** 2).sum()
            return {"r2": float(1 - residual / total) if total else 1.0,
                    "mean_relative_error": float(np.mean(np.abs(predicted / measured[rows] - 1)))}

        return cls(coefficients.tolist(), {"calibration": quality(slice(0, fitted)),
                                           "held_out": quality(slice(fitted, None)), "students_timed": len(configs)},
                   np.column_stack([features, measured]).tolist())


# --- the search space -------------------------------------------------------------------------
class Move(NamedTuple):
    """A one-unit edit of a policy: add or drop a block of `tower` (position None), or change one width
    (heads, ffn or cross) of the kept block at `position`."""
    kind: str
    tower: str
    position: int | None


WIDTH_FIELDS = {"heads": "heads", "ffn": "intermediate_size", "cross": "cross_attention_heads"}  # Move.kind -> field


class Space:
    """The teacher's shape, the block influence and unit importance, and the moves within the budget."""

    def __init__(self, teacher: AuditModel, settings: SearchSettings, influence: dict[str, torch.Tensor],
                 predict, budget_ms: float):
        self.config, self.settings, self.influence = teacher.config, settings, influence
        self.predict, self.budget = predict, budget_ms
        self.full = {t: copy.deepcopy(teacher.config.tower(t).blocks) for t in TOWERS}  # the teacher's widths

    def ffn_step(self, tower: str) -> int:
        return min(self.settings.ffn_step, min(shape.intermediate_size for shape in self.full[tower]))

    def latency(self, policy: Policy) -> float:
        return self.predict(policy)

    def scaled(self, ratio: float, rng: np.random.Generator | None = None) -> Policy:
        """Every tower keeps about `ratio` of its blocks (most influential first) and of every width;
        with `rng`, each choice is jittered (a random starting policy)."""
        policy = {}
        for tower in TOWERS:
            depth = len(self.full[tower])
            noise = (lambda scale: rng.normal(0, scale)) if rng is not None else (lambda scale: 0.0)
            count = int(np.clip(round(ratio * depth + noise(0.7)), 1, depth))
            rank = self.influence[tower].numpy() * (np.exp(rng.normal(0, 0.3, depth)) if rng is not None else 1)
            kept = sorted(np.argsort(-rank, kind="stable")[:count].tolist())
            step = self.ffn_step(tower)
            policy[tower] = []
            for block in kept:
                full = self.full[tower][block]
                heads, neurons, cross = full.heads, full.intermediate_size, full.cross_attention_heads
                policy[tower].append(KeptBlock(
                    block,
                    int(np.clip(round(ratio * heads + noise(0.7)), 1, heads)),
                    int(np.clip(round(ratio * neurons / step + noise(1.5)), 1, neurons // step)) * step,
                    int(np.clip(round(ratio * cross + noise(0.7)), 1, cross)) if cross else 0))
        return policy

    def uniform(self) -> Policy:
        """The largest single keep ratio whose student fits the budget (bisection)."""
        low, high = 0.0, 1.0
        for _ in range(30):
            middle = (low + high) / 2
            low, high = (middle, high) if self.latency(self.scaled(middle)) <= self.budget else (low, middle)
        return self.scaled(low)

    def moves(self, policy: Policy, grow: bool):
        """Every single edit that grows (or shrinks) the policy by one unit."""
        for tower, blocks in policy.items():
            if (len(blocks) < len(self.full[tower])) if grow else (len(blocks) > 1):
                yield Move("block", tower, None)
            step = self.ffn_step(tower)
            for position, kept in enumerate(blocks):
                full = self.full[tower][kept.teacher_index]
                if (kept.heads < full.heads) if grow else (kept.heads > 1):
                    yield Move("heads", tower, position)
                if (kept.intermediate_size + step <= full.intermediate_size) if grow else (kept.intermediate_size > step):
                    yield Move("ffn", tower, position)
                if full.cross_attention_heads and ((kept.cross_attention_heads < full.cross_attention_heads) if grow
                                                   else (kept.cross_attention_heads > 1)):
                    yield Move("cross", tower, position)

    def apply(self, policy: Policy, move: Move, grow: bool, rng: np.random.Generator) -> Policy:
        kind, tower, position = move
        policy = {t: list(blocks) for t, blocks in policy.items()}
        blocks = policy[tower]
        if kind == "block" and grow:
            blocks.append(self.returning_block(tower, blocks))
            blocks.sort(key=lambda kept: kept.teacher_index)
        elif kind == "block":  # drop a kept block, the less influential ones more likely
            influence = self.influence[tower]
            weights = np.array([1.0 / (float(influence[kept.teacher_index]) + 1e-6) for kept in blocks])
            blocks.pop(int(rng.choice(len(blocks), p=weights / weights.sum())))
        else:
            field, change = WIDTH_FIELDS[kind], (1 if grow else -1) * (self.ffn_step(tower) if kind == "ffn" else 1)
            blocks[position] = replace(blocks[position], **{field: getattr(blocks[position], field) + change})
        return policy

    def returning_block(self, tower: str, blocks: list[KeptBlock]) -> KeptBlock:
        """The most influential removed block, brought back at the tower's mean widths."""
        kept = {block.teacher_index for block in blocks}
        influence = self.influence[tower]
        block = max((b for b in range(len(self.full[tower])) if b not in kept), key=lambda b: influence[b])
        heads, neurons, cross = (int(np.mean([getattr(b, field) for b in blocks]))
                                 for field in ("heads", "intermediate_size", "cross_attention_heads"))
        step = self.ffn_step(tower)
        return KeptBlock(block, max(1, heads), max(step, neurons // step * step),
                         max(1, cross) if self.full[tower][block].cross_attention_heads else 0)

    def swap_block(self, policy: Policy, rng: np.random.Generator) -> Policy:
        """Replace one kept block by a removed one, keeping its widths (a move at equal cost)."""
        tower = TOWERS[rng.integers(len(TOWERS))]
        kept = {block.teacher_index for block in policy[tower]}
        removed = [b for b in range(len(self.full[tower])) if b not in kept]
        if not removed:
            return policy
        policy = {t: list(blocks) for t, blocks in policy.items()}
        position = int(rng.integers(len(policy[tower])))
        new_block = int(rng.choice(removed))
        old = policy[tower][position]
        # image-attention heads only where the new block has them (at least one)
        cross = (old.cross_attention_heads or 1) if self.full[tower][new_block].cross_attention_heads else 0
        policy[tower][position] = replace(old, teacher_index=new_block, cross_attention_heads=cross)
        policy[tower].sort(key=lambda block: block.teacher_index)
        return policy

    def fit_budget(self, policy: Policy, rng: np.random.Generator) -> Policy:
        """Random single-unit edits until the predicted latency is within [band x budget, budget]."""
        low = self.settings.latency_band * self.budget
        for _ in range(2000):
            predicted = self.latency(policy)
            if low <= predicted <= self.budget:
                return policy
            grow = predicted < low
            moves = list(self.moves(policy, grow))
            if not moves:
                break
            policy = self.apply(policy, moves[int(rng.integers(len(moves)))], grow, rng)
        while self.latency(policy) > self.budget:  # never leave the budget: shrink until it fits
            moves = list(self.moves(policy, grow=False))
            if not moves:
                break
            policy = self.apply(policy, moves[int(rng.integers(len(moves)))], False, rng)
        return policy

    def mutate(self, policy: Policy, rng: np.random.Generator) -> Policy:
        for _ in range(self.settings.mutations):
            if rng.random() < 0.25:
                policy = self.swap_block(policy, rng)
            else:
                grow = bool(rng.random() < 0.5)
                moves = list(self.moves(policy, grow))
                if moves:
                    policy = self.apply(policy, moves[int(rng.integers(len(moves)))], grow, rng)
        return self.fit_budget(policy, rng)

    def crossover(self, first: Policy, second: Policy, rng: np.random.Generator) -> Policy:
        return {t: list((first if rng.random() < 0.5 else second)[t]) for t in TOWERS}

    def fits(self, policy: Policy) -> bool:
        return self.latency(policy) <= self.budget


# --- scoring candidates -----------------------------------------------------------------------
def one_shot(supernet: AuditModel, policy: Policy, scores) -> AuditModel:
    """The supernet cut to `policy`: kept blocks, and in each the units of highest Taylor importance."""
    policy = as_policy(policy)
    keep = {}
    for tower, blocks in policy.items():
        head_dim = supernet.config.tower(tower).head_dim
        for position, kept in enumerate(blocks):
            block = kept.teacher_index
            keep[attention(tower, position)] = head_channels(top_indices(scores.heads[tower][block].grad, kept.heads),
                                                             head_dim)
            keep[ffn(tower, position)] = top_indices(scores.neurons[tower][block].grad, kept.intermediate_size)
            if tower == "qformer" and kept.cross_attention_heads:
                keep[cross_attention(position)] = head_channels(
                    top_indices(scores.cross_heads[block].grad, kept.cross_attention_heads), head_dim)
    kept_blocks = {tower: [kept.teacher_index for kept in blocks] for tower, blocks in policy.items()}
    return cut(supernet, policy_config(supernet.config, policy), keep, kept_blocks).eval()


def block_weight_norm(model: AuditModel) -> float:
    """Sum of squared Frobenius norms of every weight matrix inside the towers' blocks."""
    return sum(float(parameter.detach().pow(2).sum()) for name, parameter in model.named_parameters()
               if parameter.ndim == 2 and BLOCK_PARAMETER.match(name))


def complexity(candidate: AuditModel, teacher_norm: float) -> float:
    return math.sqrt(block_weight_norm(candidate) / teacher_norm)


@torch.inference_mode()
def verdict_accuracy(model: AuditModel, split: EncodedSplit) -> float:
    task = model.config.verdict_task  # the taxonomy's verdict task (models/labels.py)
    predicted = predict_logits(model, split)[task].argmax(-1)
    return float((predicted == split.labels[:, split.tasks.index(task)]).float().mean())


def tune_projector(candidate: AuditModel, supernet: AuditModel, split: EncodedSplit, cache: TeacherCache,
                   recipe: Recipe, generator: torch.Generator) -> None:
    """A few steps on the projector and query tokens through `candidate`; the supernet takes them."""
    settings = recipe.search
    shared = list(candidate.projector.parameters()) + [candidate.query_tokens]
    for parameter in candidate.parameters():
        parameter.requires_grad_(False)
    for parameter in shared:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(shared, lr=settings.projector_learning_rate, weight_decay=0.0)
    candidate.train()
    for _ in range(settings.projector_steps):
        index = torch.randperm(len(split), generator=generator)[:recipe.distillation.batch_size]
        loss = distillation_loss(candidate, split, cache, index, recipe.distillation)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        supernet.projector.load_state_dict(candidate.projector.state_dict())
        supernet.query_tokens.copy_(candidate.query_tokens)


MEASURED_TOLERANCE = 1.02  # a timed p50 within 2% of the budget fits it: one timing's noise


@dataclass
class Candidate:
    policy: Policy
    loss: float
    complexity: float
    fitness: float
    accuracy: float  # verdict accuracy on the search samples
    latency_ms: float  # predicted
    measured_ms: float | None = None  # timed, for the elites and the choice

    def summary(self, with_policy: bool = False) -> dict:
        """The report's form: every field but the policy, or the policy (as lists) first."""
        fields = {name: value for name, value in self.__dict__.items() if name != "policy"}
        return {"policy": policy_lists(self.policy), **fields} if with_policy else fields


class PolicySearch:
    """The evolutionary search under `budget_ms`, in named steps:

    calibrate         importance of every unit and block on the search samples, and the space of policies
    first_candidates  the uniform keep ratio, and (evolution) random policies repaired into the budget
    score             each distinct candidate cut one-shot from the supernet: loss, complexity, fitness
    select            rank by fitness, timing the elites (the latency model learns where the search
                      looks) and, in the last generation, choosing the fittest whose *measured* latency fits
    record            the generation's trace line, its candidates for the plot, the log line
    next_candidates   tune the shared projector through the best, then elites + mutated children

    `run` strings them together and returns the report section."""

    def __init__(self, teacher: AuditModel, search_split: EncodedSplit, search_cache: TeacherCache,
                 held_out: EncodedSplit, held_out_cache: TeacherCache, recipe: Recipe, budget_ms: float,
                 latency_model: LatencyModel, log=print):
        self.search_split, self.search_cache = search_split, search_cache
        self.held_out, self.held_out_cache = held_out, held_out_cache
        self.recipe, self.settings, self.budget, self.log = recipe, recipe.search, budget_ms, log
        self.latency_model = copy.deepcopy(latency_model)  # it learns from the students timed below
        self.rng = np.random.default_rng(recipe.seed)
        self.generator = torch.Generator().manual_seed(recipe.seed)
        self.hidden_sizes = final_hidden_sizes(recipe)
        self.supernet = copy.deepcopy(teacher).eval()
        self.trace: list[dict] = []
        self.points: list[dict] = []  # every scored candidate, for the plot

    def run(self) -> dict:
        started = time.perf_counter()
        self.calibrate()
        uniform = self.uniform()
        population = self.first_candidates(uniform)
        generations = 1 if self.settings.strategy == "uniform" else self.settings.generations
        for generation in range(generations):
            last = generation == generations - 1
            ranked = self.select(self.score(population), last)
            self.record(generation, ranked)
            if last:
                break
            population = self.next_candidates(ranked)
        best, _ = ranked[0]
        uniform_candidate, _ = self.evaluate(uniform)
        return {"strategy": self.settings.strategy, "budget_ms": self.budget, "policy": policy_lists(best.policy),
                "chosen": best.summary(), "budget_met": self.budget_met(best),
                "chosen_held_out_loss": self.trace[-1]["best_held_out_loss"],
                "chosen_generalization_gap": self.trace[-1]["generalization_gap"],
                "uniform": uniform_candidate.summary(with_policy=True),
                "trace": self.trace, "candidates": self.points, "settings": self.settings.model_dump(),
                "latency_model": self.latency_model.__dict__, "seconds": time.perf_counter() - started}

    def calibrate(self) -> None:
        self.scores = taylor_unit_scores(self.supernet, self.search_split, self.search_cache, self.recipe.distillation)
        influence = block_influence(self.supernet, self.search_split, TOWERS)
        self.space = Space(self.supernet, self.settings, influence, self.predicted_latency, self.budget)
        self.teacher_norm = block_weight_norm(self.supernet)
        self.penalty = self.settings.generalization_weight / math.sqrt(len(self.search_split))

    def predicted_latency(self, policy: Policy) -> float:
        return self.latency_model.predict(policy_config(self.supernet.config, policy, self.hidden_sizes))

    def timed(self, policy: Policy) -> float:
        """Time the policy's final shape; teach the latency model, so later repairs respect it."""
        config = policy_config(self.supernet.config, policy, self.hidden_sizes)
        measured_ms = time_config(config, self.search_split)
        self.latency_model.learn(config, measured_ms)
        return measured_ms

    def uniform(self) -> Policy:
        uniform = self.space.uniform()
        if self.settings.time_candidates and self.settings.strategy == "uniform":
            # the uniform ratio is compared at equal *measured* latency too: re-bisect until it fits
            for _ in range(4):
                if self.within_budget(self.timed(uniform)):
                    break
                uniform = self.space.uniform()
        return uniform

    def first_candidates(self, uniform: Policy) -> list[Policy]:
        if self.settings.strategy == "uniform":
            return [uniform]
        space, rng = self.space, self.rng
        return [uniform] + [space.fit_budget(space.scaled(float(rng.uniform(0.1, 0.9)), rng), rng)
                            for _ in range(self.settings.population - 1)]

    def evaluate(self, policy: Policy) -> tuple[Candidate, AuditModel]:
        model = one_shot(self.supernet, policy, self.scores)
        loss = mean_distillation_loss(model, self.search_split, self.search_cache, self.recipe.distillation)
        weight = complexity(model, self.teacher_norm)
        return Candidate(policy, loss, weight, -loss - self.penalty * weight,
                         verdict_accuracy(model, self.search_split), self.space.latency(policy)), model

    def score(self, population: list[Policy]) -> list[tuple[Candidate, AuditModel]]:
        """Every distinct policy scored, fittest first."""
        # the latency model may have learnt since these were repaired: keep every one within the budget
        population = [policy if self.space.fits(policy) else self.space.fit_budget(policy, self.rng)
                      for policy in population]
        scored = {}
        for policy in population:
            key = policy_key(policy)
            if key not in scored:
                scored[key] = self.evaluate(policy)
        return sorted(scored.values(), key=lambda pair: -pair[0].fitness)

    def select(self, ranked: list[tuple[Candidate, AuditModel]], last: bool) -> list[tuple[Candidate, AuditModel]]:
        if not self.settings.time_candidates:
            return ranked
        if last:  # the choice: the fittest whose *measured* latency fits (timed in order, until one does)
            fitting = next((i for i, (c, _) in enumerate(ranked) if self.within_budget(self.measure(c))), None)
            if fitting is not None:
                return ranked[fitting:]
            # none fits (a budget below the smallest student, or a noisy machine): the fastest measured,
            # said aloud here and as `budget_met: false` in the report, never passed off as fitting
            closest = min(range(len(ranked)), key=lambda i: ranked[i][0].measured_ms)
            self.log(f"  no candidate measured within the {self.budget:.2f} ms budget: choosing the fastest, "
                     f"{ranked[closest][0].measured_ms:.2f} ms measured")
            return [ranked[closest]] + ranked[:closest] + ranked[closest + 1:]
        for candidate, _ in ranked[:self.settings.elites]:
            self.measure(candidate)
        return ranked

    def within_budget(self, measured_ms: float) -> bool:
        """A timed latency within the budget, give or take the timing noise of one p50 (2%)."""
        return measured_ms <= self.budget * MEASURED_TOLERANCE

    def budget_met(self, chosen: Candidate) -> bool:
        """Judged by measurement where the choice was timed, else by the latency model's prediction."""
        if chosen.measured_ms is not None:
            return self.within_budget(chosen.measured_ms)
        return chosen.latency_ms <= self.budget

    def measure(self, candidate: Candidate) -> float:
        candidate.measured_ms = self.timed(candidate.policy)
        return candidate.measured_ms

    def record(self, generation: int, ranked: list[tuple[Candidate, AuditModel]]) -> None:
        best, best_model = ranked[0]
        held_out_loss = (mean_distillation_loss(best_model, self.held_out, self.held_out_cache,
                                                self.recipe.distillation) if len(self.held_out) else float("nan"))
        fitness = [c.fitness for c, _ in ranked]
        self.trace.append({"generation": generation, "best_fitness": best.fitness,
                           "mean_fitness": float(np.mean(fitness)), "best_loss": best.loss,
                           "best_complexity": best.complexity, "best_accuracy": best.accuracy,
                           "best_held_out_loss": held_out_loss, "generalization_gap": held_out_loss - best.loss,
                           "best_latency_ms": best.latency_ms, "evaluated": len(ranked)})
        self.points += [{"generation": generation, "latency_ms": c.latency_ms, "measured_ms": c.measured_ms,
                         "accuracy": c.accuracy, "fitness": c.fitness} for c, _ in ranked]
        self.log(f"  generation {generation}: best fitness {best.fitness:.4f} (loss {best.loss:.4f}, complexity "
                 f"{best.complexity:.3f}, held-out loss {held_out_loss:.4f}), {best.latency_ms:.2f} ms predicted")

    def next_candidates(self, ranked: list[tuple[Candidate, AuditModel]]) -> list[Policy]:
        if self.settings.projector_steps:
            tune_projector(ranked[0][1], self.supernet, self.search_split, self.search_cache, self.recipe,
                           self.generator)
        elites = [c.policy for c, _ in ranked[:self.settings.elites]]
        parents = [c.policy for c, _ in ranked[:max(2, len(ranked) // 2)]]
        population, rng = list(elites), self.rng
        while len(population) < self.settings.population:
            first, second = (parents[i] for i in rng.choice(len(parents), 2))
            child = self.space.crossover(first, second, rng) if rng.random() < 0.5 else first
            population.append(self.space.mutate(child, rng))
        return population


def calibration_configs(teacher: AuditModel, recipe: Recipe, count: int, seed: int) -> list[AuditModelConfig]:
    """Randomly shaped students (random keep ratios, jittered per block) at the final hidden sizes."""
    rng = np.random.default_rng(seed + 1)
    flat = {t: torch.ones(len(teacher.blocks(t))) for t in TOWERS}
    space = Space(teacher, recipe.search, flat, lambda policy: 0.0, float("inf"))
    hidden_sizes = final_hidden_sizes(recipe.resolve(teacher.config))  # targets relative to the teacher: its
    return [policy_config(teacher.config, space.scaled(float(rng.uniform(0.05, 1.0)), rng), hidden_sizes)
            for _ in range(count)]


def policy_recipe(recipe: Recipe, policy: Policy) -> Recipe:
    """`recipe` with its blocks and widths stages set to `policy` (added first if absent), search removed."""
    policy = as_policy(policy)
    blocks = {tower: [b.teacher_index for b in kept] for tower, kept in policy.items()}
    widths = {"heads": {t: [b.heads for b in kept] for t, kept in policy.items()},
              "ffn": {t: [b.intermediate_size for b in kept] for t, kept in policy.items()},
              "cross_attention_heads": [b.cross_attention_heads for b in policy["qformer"] if b.cross_attention_heads]}
    stages = list(recipe.stages)
    block_stages = [i for i, s in enumerate(stages) if isinstance(s, BlocksStage)]
    if block_stages:
        stages[block_stages[0]] = stages[block_stages[0]].model_copy(update={"keep": blocks})
    else:
        stages.insert(0, BlocksStage(kind="blocks", keep=blocks))
    width_stages = [i for i, s in enumerate(stages) if isinstance(s, WidthsStage)]
    if width_stages:
        stages[width_stages[0]] = stages[width_stages[0]].model_copy(update=widths)
    else:
        stages.insert(1, WidthsStage(kind="widths", **widths))
    return recipe.model_copy(update={"stages": stages, "search": None})


def search_policy(teacher: AuditModel, train: EncodedSplit, order: torch.Tensor, recipe: Recipe, budget_ms: float,
                  log=print, latency_model: LatencyModel | None = None) -> dict:
    """The search on `recipe.search.samples` training ads (the first of `order`); the held-out ads for
    the generalization gap come after the distillation samples, so none is ever a test ad. A recipe with
    targets relative to the teacher is resolved against it first (its hidden sizes set the students timed)."""
    recipe = recipe.resolve(teacher.config)
    settings = recipe.search
    search_split = train.subset(order[:settings.samples])
    rest = order[recipe.distillation.samples:] if len(order) > recipe.distillation.samples else order[settings.samples:]
    held_out = train.subset(rest[:settings.held_out_samples])
    if latency_model is None:
        log(f"calibrating the latency model on {settings.calibration_models} randomly shaped students")
        latency_model = LatencyModel.calibrate(
            calibration_configs(teacher, recipe, settings.calibration_models, recipe.seed), search_split, log)
        log(f"  held-out students: r2 {latency_model.fit['held_out']['r2']:.3f}, mean error "
            f"{100 * latency_model.fit['held_out']['mean_relative_error']:.1f}%")
    log(f"searching per-layer policies under {budget_ms:.2f} ms on {len(search_split)} training ads "
        f"({settings.strategy})")
    return PolicySearch(teacher, search_split, cache_teacher(teacher, search_split), held_out,
                        cache_teacher(teacher, held_out), recipe, budget_ms, latency_model, log).run()


def plot_search(section: dict, folder) -> None:
    """search_fitness.png (fitness, loss and complexity per generation) and search_candidates.png
    (every candidate's search-sample verdict accuracy against its predicted latency)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace = section["trace"]
    generations = [t["generation"] for t in trace]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(generations, [t["best_fitness"] for t in trace], marker="o", label="best fitness")
    left.plot(generations, [t["mean_fitness"] for t in trace], marker=".", label="mean fitness")
    left.set_xlabel("generation")
    left.set_ylabel("fitness = -loss - eta * complexity / sqrt(n)")
    left.legend()
    right.plot(generations, [t["best_loss"] for t in trace], marker="o", label="best: search-sample loss")
    right.plot(generations, [t["best_held_out_loss"] for t in trace], marker="s", label="best: held-out loss")
    right.set_xlabel("generation")
    right.set_ylabel("distillation loss (one-shot)")
    twin = right.twinx()
    twin.plot(generations, [t["best_complexity"] for t in trace], color="grey", linestyle="--", label="complexity")
    twin.set_ylabel("complexity (Frobenius, / teacher)")
    right.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(folder / "search_fitness.png", dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6, 4))
    points = section["candidates"]
    scatter = axes.scatter([p["latency_ms"] for p in points], [100 * p["accuracy"] for p in points],
                           c=[p["generation"] for p in points], cmap="viridis", s=14)
    figure.colorbar(scatter, label="generation")
    chosen = section["chosen"]
    axes.scatter([chosen["latency_ms"]], [100 * chosen["accuracy"]], marker="*", s=220, color="red", label="chosen")
    axes.scatter([section["uniform"]["latency_ms"]], [100 * section["uniform"]["accuracy"]], marker="X", s=120,
                 color="black", label="uniform ratio")
    axes.axvline(section["budget_ms"], color="grey", linestyle=":", label="budget")
    axes.set_xlabel("predicted batch-1 latency of the student (ms)")
    axes.set_ylabel("one-shot verdict accuracy, search ads (%)")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(folder / "search_candidates.png", dpi=110)
    plt.close(figure)
