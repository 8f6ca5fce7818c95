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
from dataclasses import dataclass, field

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

# A policy: tower -> list of kept blocks, each [teacher block number, heads, FFN neurons, image-attention heads]
Policy = dict[str, list[list[int]]]


def policy_key(policy: Policy) -> str:
    return json.dumps(policy, sort_keys=True)


def policy_config(config: AuditModelConfig, policy: Policy, hidden_sizes: dict[str, int] | None = None) -> AuditModelConfig:
    """The config of a student shaped by `policy` (and, for timing, the final hidden sizes)."""
    config = copy.deepcopy(config)
    for tower, blocks in policy.items():
        config.tower(tower).blocks = [BlockShape(heads, neurons, cross) for _, heads, neurons, cross in blocks]
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
class Space:
    """The teacher's shape, the block influence and unit importance, and the moves within the budget."""

    def __init__(self, teacher: AuditModel, settings: SearchSettings, influence: dict[str, torch.Tensor],
                 predict, budget_ms: float):
        self.config, self.settings, self.influence = teacher.config, settings, influence
        self.predict, self.budget = predict, budget_ms
        self.full = {t: [(s.heads, s.intermediate_size, s.cross_attention_heads) for s in teacher.config.tower(t).blocks]
                     for t in TOWERS}

    def ffn_step(self, tower: str) -> int:
        return min(self.settings.ffn_step, min(f for _, f, _ in self.full[tower]))

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
                heads, neurons, cross = self.full[tower][block]
                policy[tower].append([
                    block,
                    int(np.clip(round(ratio * heads + noise(0.7)), 1, heads)),
                    int(np.clip(round(ratio * neurons / step + noise(1.5)), 1, neurons // step)) * step,
                    int(np.clip(round(ratio * cross + noise(0.7)), 1, cross)) if cross else 0])
        return policy

    def uniform(self) -> Policy:
        """The largest single keep ratio whose student fits the budget (bisection)."""
        low, high = 0.0, 1.0
        for _ in range(30):
            middle = (low + high) / 2
            low, high = (middle, high) if self.latency(self.scaled(middle)) <= self.budget else (low, middle)
        return self.scaled(low)

    def moves(self, policy: Policy, grow: bool):
        """Every single edit that grows (or shrinks) the policy by one unit: (kind, tower, position)."""
        for tower, blocks in policy.items():
            kept = {b[0] for b in blocks}
            if grow and len(kept) < len(self.full[tower]):
                yield "block", tower, None
            if not grow and len(blocks) > 1:
                yield "block", tower, None
            for position, (block, heads, neurons, cross) in enumerate(blocks):
                full_heads, full_neurons, full_cross = self.full[tower][block]
                if (heads < full_heads) if grow else (heads > 1):
                    yield "heads", tower, position
                step = self.ffn_step(tower)
                if (neurons + step <= full_neurons) if grow else (neurons > step):
                    yield "ffn", tower, position
                if full_cross and ((cross < full_cross) if grow else (cross > 1)):
                    yield "cross", tower, position

    def apply(self, policy: Policy, move, grow: bool, rng: np.random.Generator) -> Policy:
        kind, tower, position = move
        policy = copy.deepcopy(policy)
        blocks = policy[tower]
        sign = 1 if grow else -1
        if kind == "block":
            kept = {b[0] for b in blocks}
            influence = self.influence[tower]
            if grow:  # bring back the most influential removed block, at the tower's mean widths
                block = max((b for b in range(len(self.full[tower])) if b not in kept), key=lambda b: influence[b])
                mean = [int(np.mean([b[i] for b in blocks])) for i in (1, 2, 3)]
                step = self.ffn_step(tower)
                blocks.append([block, max(1, mean[0]), max(step, mean[1] // step * step),
                               max(1, mean[2]) if self.full[tower][block][2] else 0])
                blocks.sort()
            else:  # drop a kept block, the less influential ones more likely
                weights = np.array([1.0 / (float(influence[b[0]]) + 1e-6) for b in blocks])
                blocks.pop(int(rng.choice(len(blocks), p=weights / weights.sum())))
        else:
            index = {"heads": 1, "ffn": 2, "cross": 3}[kind]
            blocks[position][index] += sign * (self.ffn_step(tower) if kind == "ffn" else 1)
        return policy

    def swap_block(self, policy: Policy, rng: np.random.Generator) -> Policy:
        """Replace one kept block by a removed one, keeping its widths (a move at equal cost)."""
        tower = TOWERS[rng.integers(len(TOWERS))]
        kept = {b[0] for b in policy[tower]}
        removed = [b for b in range(len(self.full[tower])) if b not in kept]
        if not removed:
            return policy
        policy = copy.deepcopy(policy)
        position = int(rng.integers(len(policy[tower])))
        new_block = int(rng.choice(removed))
        entry = policy[tower][position]
        entry[0] = new_block
        if not self.full[tower][new_block][2]:
            entry[3] = 0
        elif not entry[3]:
            entry[3] = 1
        policy[tower].sort()
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
        return {t: copy.deepcopy((first if rng.random() < 0.5 else second)[t]) for t in TOWERS}

    def fits(self, policy: Policy) -> bool:
        return self.latency(policy) <= self.budget


# --- scoring candidates -----------------------------------------------------------------------
def one_shot(supernet: AuditModel, policy: Policy, scores) -> AuditModel:
    """The supernet cut to `policy`: kept blocks, and in each the units of highest Taylor importance."""
    keep = {}
    for tower, blocks in policy.items():
        head_dim = supernet.config.tower(tower).head_dim
        for position, (block, heads, neurons, cross) in enumerate(blocks):
            keep[attention(tower, position)] = head_channels(top_indices(scores.heads[tower][block].grad, heads), head_dim)
            keep[ffn(tower, position)] = top_indices(scores.neurons[tower][block].grad, neurons)
            if tower == "qformer" and cross:
                keep[cross_attention(position)] = head_channels(
                    top_indices(scores.cross_heads[block].grad, cross), head_dim)
    kept_blocks = {tower: [b[0] for b in blocks] for tower, blocks in policy.items()}
    return cut(supernet, policy_config(supernet.config, policy), keep, kept_blocks).eval()


def block_weight_norm(model: AuditModel) -> float:
    """Sum of squared Frobenius norms of every weight matrix inside the towers' blocks."""
    return sum(float(parameter.detach().pow(2).sum()) for name, parameter in model.named_parameters()
               if parameter.ndim == 2 and BLOCK_PARAMETER.match(name))


def complexity(candidate: AuditModel, teacher_norm: float) -> float:
    return math.sqrt(block_weight_norm(candidate) / teacher_norm)


@torch.inference_mode()
def verdict_accuracy(model: AuditModel, split: EncodedSplit) -> float:
    predicted = predict_logits(model, split)["verdict"].argmax(-1)
    return float((predicted == split.labels[:, split.tasks.index("verdict")]).float().mean())


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


@dataclass
class Candidate:
    policy: Policy
    loss: float
    complexity: float
    fitness: float
    accuracy: float  # verdict accuracy on the search samples
    latency_ms: float  # predicted
    measured_ms: float | None = None  # timed, for the elites and the choice


def search(teacher: AuditModel, search_split: EncodedSplit, search_cache: TeacherCache, held_out: EncodedSplit,
           held_out_cache: TeacherCache, recipe: Recipe, budget_ms: float, latency_model: LatencyModel,
           log=print) -> dict:
    """Evolve policies under `budget_ms`; returns the chosen policy and the trace, as a report section."""
    started = time.perf_counter()
    settings = recipe.search
    latency_model = copy.deepcopy(latency_model)  # it learns from the students timed below
    rng = np.random.default_rng(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    hidden_sizes = final_hidden_sizes(recipe)
    supernet = copy.deepcopy(teacher).eval()
    scores = taylor_unit_scores(supernet, search_split, search_cache, recipe.distillation)
    influence = block_influence(supernet, search_split, TOWERS)
    space = Space(supernet, settings, influence,
                  lambda policy: latency_model.predict(policy_config(supernet.config, policy, hidden_sizes)), budget_ms)
    teacher_norm = block_weight_norm(supernet)
    penalty = settings.generalization_weight / math.sqrt(len(search_split))

    def evaluate(policy: Policy) -> tuple[Candidate, AuditModel]:
        model = one_shot(supernet, policy, scores)
        loss = mean_distillation_loss(model, search_split, search_cache, recipe.distillation)
        weight = complexity(model, teacher_norm)
        return Candidate(policy, loss, weight, -loss - penalty * weight, verdict_accuracy(model, search_split),
                         space.latency(policy)), model

    def timed(policy: Policy) -> float:
        """Time the policy's final shape; teach the latency model, so later repairs respect it."""
        config = policy_config(supernet.config, policy, hidden_sizes)
        measured_ms = time_config(config, search_split)
        latency_model.learn(config, measured_ms)
        return measured_ms

    def measured_latency(candidate: Candidate) -> float:
        candidate.measured_ms = timed(candidate.policy)
        return candidate.measured_ms

    uniform = space.uniform()
    if settings.time_candidates and settings.strategy == "uniform":
        # the uniform ratio is compared at equal *measured* latency too: re-bisect until it fits
        for _ in range(4):
            if timed(uniform) <= budget_ms * 1.02:
                break
            uniform = space.uniform()
    population = [uniform] if settings.strategy == "uniform" else [uniform] + [
        space.fit_budget(space.scaled(float(rng.uniform(0.1, 0.9)), rng), rng) for _ in range(settings.population - 1)]
    generations = 1 if settings.strategy == "uniform" else settings.generations
    trace, candidates = [], []
    for generation in range(generations):
        # the latency model may have learnt since these were repaired: keep every one within the budget
        population = [policy if space.fits(policy) else space.fit_budget(policy, rng) for policy in population]
        scored = {}
        for policy in population:
            key = policy_key(policy)
            if key not in scored:
                scored[key] = evaluate(policy)
        ranked = sorted(scored.values(), key=lambda pair: -pair[0].fitness)
        if settings.time_candidates and generation == generations - 1:
            # the choice: the fittest whose *measured* latency fits (timed in order, until one does)
            fitting = next((i for i, (c, _) in enumerate(ranked) if measured_latency(c) <= budget_ms * 1.02), None)
            if fitting is not None:
                ranked = ranked[fitting:]
        elif settings.time_candidates:
            for candidate, _ in ranked[:settings.elites]:
                measured_latency(candidate)
        best, best_model = ranked[0]
        held_out_loss = (mean_distillation_loss(best_model, held_out, held_out_cache, recipe.distillation)
                         if len(held_out) else float("nan"))
        fitness = [c.fitness for c, _ in ranked]
        trace.append({"generation": generation, "best_fitness": best.fitness, "mean_fitness": float(np.mean(fitness)),
                      "best_loss": best.loss, "best_complexity": best.complexity, "best_accuracy": best.accuracy,
                      "best_held_out_loss": held_out_loss, "generalization_gap": held_out_loss - best.loss,
                      "best_latency_ms": best.latency_ms, "evaluated": len(ranked)})
        candidates += [{"generation": generation, "latency_ms": c.latency_ms, "accuracy": c.accuracy,
                        "fitness": c.fitness} for c, _ in ranked]
        log(f"  generation {generation}: best fitness {best.fitness:.4f} (loss {best.loss:.4f}, complexity "
            f"{best.complexity:.3f}, held-out loss {held_out_loss:.4f}), {best.latency_ms:.2f} ms predicted")
        if generation == generations - 1:
            break
        if settings.projector_steps:
            tune_projector(best_model, supernet, search_split, search_cache, recipe, generator)
        elites = [c.policy for c, _ in ranked[:settings.elites]]
        parents = [c.policy for c, _ in ranked[:max(2, len(ranked) // 2)]]
        population = list(elites)
        while len(population) < settings.population:
            first, second = (parents[i] for i in rng.choice(len(parents), 2))
            child = space.crossover(first, second, rng) if rng.random() < 0.5 else copy.deepcopy(first)
            population.append(space.mutate(child, rng))
    uniform_candidate = evaluate(uniform)[0]
    return {"strategy": settings.strategy, "budget_ms": budget_ms, "policy": best.policy,
            "chosen": {k: v for k, v in best.__dict__.items() if k != "policy"},
            "chosen_held_out_loss": trace[-1]["best_held_out_loss"],
            "chosen_generalization_gap": trace[-1]["generalization_gap"],
            "uniform": {k: v for k, v in uniform_candidate.__dict__.items()},
            "trace": trace, "candidates": candidates, "settings": settings.model_dump(),
            "latency_model": latency_model.__dict__, "seconds": time.perf_counter() - started}


def calibration_configs(teacher: AuditModel, recipe: Recipe, count: int, seed: int) -> list[AuditModelConfig]:
    """Randomly shaped students (random keep ratios, jittered per block) at the final hidden sizes."""
    rng = np.random.default_rng(seed + 1)
    flat = {t: torch.ones(len(teacher.blocks(t))) for t in TOWERS}
    space = Space(teacher, recipe.search, flat, lambda policy: 0.0, float("inf"))
    hidden_sizes = final_hidden_sizes(recipe)
    return [policy_config(teacher.config, space.scaled(float(rng.uniform(0.05, 1.0)), rng), hidden_sizes)
            for _ in range(count)]


def policy_recipe(recipe: Recipe, policy: Policy) -> Recipe:
    """`recipe` with its blocks and widths stages set to `policy` (added first if absent), search removed."""
    blocks = {tower: [b[0] for b in entries] for tower, entries in policy.items()}
    widths = {"heads": {t: [b[1] for b in entries] for t, entries in policy.items()},
              "ffn": {t: [b[2] for b in entries] for t, entries in policy.items()},
              "cross_attention_heads": [b[3] for b in policy["qformer"] if b[3]]}
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
    the generalization gap come after the distillation samples, so none is ever a test ad."""
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
    return search(teacher, search_split, cache_teacher(teacher, search_split), held_out,
                  cache_teacher(teacher, held_out), recipe, budget_ms, latency_model, log)


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
