"""The study's questions answered: each knob's effect with a confidence interval, the probability
of improvement, a Holm-adjusted p-value and a verdict in plain words (on ``scipy.stats``).

Design. The groups that enter are results with the study's most common budget and data
(``trainer.max_epochs``/``max_steps``/..., ``data.*``), and of them only finished runs (a run
hyperband stopped had its budget cut); the others are listed as left out.

- *Factorial grid*: the groups with a block vary in two or more knobs and hold every combination
  of their levels once (GCNet: pooling x fusion x layernorm, inside the block's ``init_args``).
  A knob's **main effect** (reference -> tested) is the mean at the tested level minus the mean at
  the reference, averaged over the other knobs' levels; a **two-way interaction** of two 2-level
  knobs K, L is K's effect at L's tested level minus K's effect at L's reference. The grid
  against the no-block baseline is one more contrast.
- Otherwise, each group against its baseline (the no-block group that differs in the block alone).

Each contrast is a sum of group means with weights (+ tested, - reference). **Paired** when every
group in it ran the same seeds: the unit is a matched set (one seed, one setting of the other
knobs) and its value the contrast within it, so seed-to-seed spread cancels. Then

- the 95% interval is ``scipy.stats.bootstrap`` (BCa) of the mean over units;
- P(better) is the fraction of units in which the tested level did better (ties count 1/2);
- the p-value is the sign-flip permutation test of the mean (exact up to 2^16 sign patterns),
  or, with 5 units or fewer, the one-sample t-test of the unit values: 2 / 2^n, the sign-flip
  test's smallest two-sided p, cannot go below 0.05 with n <= 5.

**Unpaired** otherwise: the interval bootstraps each group's runs on their own; P(better) is the
Mann-Whitney common-language effect size U / (n_a n_b) of the two arms' runs (none for an
interaction); the p-value is Welch's t-test of the contrast (Satterthwaite's degrees of freedom).

All p-values of a study are adjusted together by Holm's step-down method. Verdict: *helps* /
*hurts* when the interval excludes 0 and p_adj < 0.05; *within noise* when the interval holds 0
(with the seeds the interval would need to exclude 0 at the observed effect: the normal-theory
half-width 1.96 s / sqrt(n) set equal to the effect); *unclear* when the interval excludes 0 but
p_adj does not pass. The noise floor is the baseline's seed spread (its std over seeds).
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from ctxlit.report.runs import UNSET, Group, cell, differences, shown_knobs
from ctxlit.report.study import Study
from ctxlit.runs import Status

ALPHA = 0.05
CONFIDENCE = 0.95
RESAMPLES = 9999
EXACT_SIGN_FLIPS = 2 ** 16  # up to this many sign patterns the permutation test is exact
MIN_SIGN_FLIP_UNITS = 6  # below it the sign-flip test cannot reach p < 0.05 (2 / 2^5 = 0.0625)
SEED = 0  # resampling is seeded: the same runs give the same report


@dataclass
class Effect:
    """One question's answer: ``delta`` = mean(tested) - mean(reference) (over the other knobs)."""

    knob: str  # the dotted key, "K × L" for an interaction, or the group's label against the baseline
    kind: str  # main | interaction | vs baseline
    levels: tuple[str, str]  # (reference, tested)
    delta: float
    ci_low: float | None
    ci_high: float | None
    p_improve: float | None  # P(tested better than reference), goal-aware
    p: float | None
    n: tuple[int, int]  # runs in the reference arm, runs in the tested arm
    paired: bool
    units: list[float]  # the contrast in each matched set (paired; [] unpaired): the dots of the figure
    test: str
    spread: float | None  # std of a unit (paired) or sqrt(sum w² s²) (unpaired): for seeds needed
    per_seed: float  # units per seed (paired) or 1 (unpaired)
    seeds: int  # seeds each group ran
    p_adj: float | None = None
    verdict: str = ""
    seeds_needed: int | None = None
    cost_ratio: float | None = None

    @property
    def question(self) -> str:
        if self.kind == "vs baseline":
            return f"{self.levels[1]} vs {self.levels[0]}"
        short = self.knob.rsplit(".", 1)[-1] if self.kind == "main" else self.knob
        return f"{short}: {self.levels[1]} vs {self.levels[0]}"

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low is not None and (self.ci_low > 0 or self.ci_high < 0)

    def sentence(self, goal: str) -> str:
        interval = "" if self.ci_low is None else f" [{self.ci_low:+.4f}, {self.ci_high:+.4f}]"
        better = "" if self.p_improve is None else f", P(better) {self.p_improve:.2f}"
        p_adj = "" if self.p_adj is None else f", p_adj {self.p_adj:.2g}"
        return f"{self.question}: {self.delta:+.4f}{interval}{better}{p_adj} — {self.verdict}"


@dataclass
class Answers:
    effects: list[Effect]
    design: str  # how the groups were read: factorial (its knobs) or each against the baseline
    noise_floor: float | None  # the baseline's std over seeds
    noise_n: int
    left_out: list[str] = field(default_factory=list)  # groups not in any effect, and why


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes
    max over j <= i of min(1, (m - j + 1) p_(j))."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def p_improve_paired(units: list[float], goal: str) -> float:
    """The fraction of matched units where the tested level did better; ties count half."""
    sign = 1 if goal == "maximize" else -1
    wins = sum(1.0 if sign * u > 0 else 0.5 if u == 0 else 0.0 for u in units)
    return wins / len(units)


def p_improve_unpaired(reference: list[float], tested: list[float], goal: str) -> float:
    """Mann-Whitney's common-language effect size: P(a tested run beats a reference run), ties 1/2."""
    u = stats.mannwhitneyu(tested, reference, alternative="two-sided").statistic  # U of `tested`
    cles = float(u) / (len(tested) * len(reference))
    return cles if goal == "maximize" else 1.0 - cles


# --------------------------------------------------------------------------- the design


def _level(group: Group, key: str) -> str:
    return cell(group.knobs, key)


def _kept(study: Study) -> tuple[list[Group], list[str]]:
    """The groups with the study's most common budget and data (by runs); the others, with why."""
    signatures: dict[str, int] = {}
    for group in study.groups:
        key = json.dumps(group.budget_and_data, sort_keys=True, default=str)
        signatures[key] = signatures.get(key, 0) + len(group.runs)
    common = max(signatures, key=signatures.get)
    kept, left_out = [], []
    reference = json.loads(common)
    for group in study.groups:
        if json.dumps(group.budget_and_data, sort_keys=True, default=str) == common:
            kept.append(group)
        else:
            left_out.append(f"{group.label}: its budget or data differ from the rest's "
                            f"({'; '.join(differences(group.budget_and_data, reference))})")
    return kept, left_out


def _factors(cells: list[Group]) -> dict[str, list[str]] | None:
    """{knob: levels (tested first, then the others; true before false)} when ``cells`` are a
    full factorial of two or more knobs, each combination once; else None."""
    if len(cells) < 4:
        return None
    shown = [shown_knobs(g.knobs) for g in cells]
    keys = list(dict.fromkeys(k for s in shown for k in s))
    factors = {}
    for key in keys:
        levels = list(dict.fromkeys(_level(g, key) for g in cells))
        if len(levels) > 1:
            factors[key] = sorted(levels, key=lambda v: v != "true") if set(levels) == {"true", "false"} else levels
    if len(factors) < 2 or UNSET in {v for levels in factors.values() for v in levels}:
        return None
    combos = {tuple(_level(g, k) for k in factors) for g in cells}
    if len(combos) != len(cells) or len(combos) != math.prod(len(v) for v in factors.values()):
        return None
    return factors


# --------------------------------------------------------------------------- one contrast


def _contrast(weights: list[tuple[Group, float]], units_of: list[list[tuple[Group, float]]], metric: str,
              goal: str, knob: str, kind: str, levels: tuple[str, str], rng) -> Effect | None:
    """The effect ``sum w * group mean``. ``units_of``: the matched sets (each a list of
    (group, weight) whose weighted sum is one unit's contrast), used when the seeds pair."""
    by_seed = {id(g): g.values_by_seed(metric, finished_only=True) for g, _ in weights}
    seed_sets = {frozenset(by_seed[id(g)]) for g, _ in weights}
    reference = [v for g, w in weights if w < 0 for v in by_seed[id(g)].values()]
    tested = [v for g, w in weights if w > 0 for v in by_seed[id(g)].values()]
    if any(len(by_seed[id(g)]) == 0 for g, _ in weights):
        return None
    paired = len(seed_sets) == 1 and len(next(iter(seed_sets))) >= 2
    seeds = min(len(by_seed[id(g)]) for g, _ in weights)
    if paired:
        seed_list = sorted(next(iter(seed_sets)))
        units = [sum(w * by_seed[id(g)][s] for g, w in unit) for unit in units_of for s in seed_list]
        delta = statistics.fmean(units)
        ci = _bootstrap((np.asarray(units),), lambda u, axis: np.mean(u, axis=axis), rng, paired=True)
        if len(units) >= MIN_SIGN_FLIP_UNITS:
            exact = 2 ** len(units) <= EXACT_SIGN_FLIPS
            result = stats.permutation_test((np.asarray(units),), lambda u, axis: np.mean(u, axis=axis),
                                            permutation_type="samples", vectorized=True,
                                            n_resamples=EXACT_SIGN_FLIPS if exact else RESAMPLES, random_state=rng)
            p, test = float(result.pvalue), f"sign-flip permutation ({'exact' if exact else f'{RESAMPLES} resamples'})"
        else:
            p = _t_one_sample(units)
            test = "one-sample t of the paired differences"
        spread = statistics.stdev(units) if len(units) > 1 else None
        return Effect(knob, kind, levels, delta, *ci, p_improve_paired(units, goal), p, (len(reference), len(tested)),
                      True, units, test, spread, len(units_of), seeds)
    samples = [np.asarray(list(by_seed[id(g)].values())) for g, _ in weights]
    w = np.asarray([w for _, w in weights])
    delta = float(sum(wi * s.mean() for wi, s in zip(w, samples)))
    ci = (None, None)
    if all(len(s) >= 2 for s in samples):
        ci = _bootstrap(tuple(samples), lambda *xs, axis: sum(wi * x.mean(axis=axis) for wi, x in zip(w, xs)),
                        rng, paired=False)
    p, spread = _welch_contrast(samples, w)
    two_arms = kind != "interaction" and reference and tested
    return Effect(knob, kind, levels, delta, *ci, p_improve_unpaired(reference, tested, goal) if two_arms else None,
                  p, (len(reference), len(tested)), False, [], "Welch t of the contrast", spread, 1, seeds)


def _bootstrap(samples, statistic, rng, paired: bool) -> tuple[float | None, float | None]:
    if all(np.ptp(s) == 0 for s in samples):  # no spread at all: the interval is the point
        value = float(statistic(*[s[None, :] for s in samples], axis=-1)[0])
        return value, value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa's degenerate-jackknife warning: handled below
        for method in ("BCa", "percentile"):
            interval = stats.bootstrap(samples, statistic, paired=paired, vectorized=True, n_resamples=RESAMPLES,
                                       confidence_level=CONFIDENCE, method=method, random_state=rng).confidence_interval
            if np.isfinite(interval.low) and np.isfinite(interval.high):
                return float(interval.low), float(interval.high)
    return None, None


def _t_one_sample(units: list[float]) -> float | None:
    if statistics.stdev(units) == 0:
        return 0.0 if units[0] != 0 else 1.0
    return float(stats.ttest_1samp(units, 0.0).pvalue)


def _welch_contrast(samples: list[np.ndarray], w: np.ndarray) -> tuple[float | None, float | None]:
    """Welch's t-test of sum w_i mean_i = 0 (Satterthwaite's df), and the contrast's spread
    sqrt(sum w_i² s_i²): its standard error with one run per group."""
    if any(len(s) < 2 for s in samples):
        return None, None
    parts = np.asarray([wi ** 2 * s.var(ddof=1) / len(s) for wi, s in zip(w, samples)])
    spread = float(math.sqrt(sum(wi ** 2 * s.var(ddof=1) for wi, s in zip(w, samples))))
    se = math.sqrt(parts.sum())
    estimate = float(sum(wi * s.mean() for wi, s in zip(w, samples)))
    if se == 0:
        return (0.0 if estimate != 0 else 1.0), spread
    df = parts.sum() ** 2 / sum(p ** 2 / (len(s) - 1) for p, s in zip(parts, samples))
    return float(2 * stats.t.sf(abs(estimate) / se, df)), spread


# --------------------------------------------------------------------------- the study


def answer(study: Study) -> Answers:
    rng = np.random.default_rng(SEED)
    kept, left_out = _kept(study)
    stopped = [str(r.dir) for g in kept for r in g.runs if r.folder.status is not Status.FINISHED]
    if stopped:
        left_out.append(f"{len(stopped)} run(s) stopped early by hyperband (their budget was cut): "
                        f"{', '.join(stopped)}")
    baselines = [g for g in kept if g.is_baseline]
    cells = [g for g in kept if not g.is_baseline]
    factors = _factors(cells)
    effects: list[Effect] = []
    if factors:
        effects += _factorial(cells, factors, study, rng)
        design = f"factorial: {' × '.join(k.rsplit('.', 1)[-1] for k in factors)} ({len(cells)} groups)"
        base = {id(study.baseline_of(c)) for c in cells}
        baseline = study.baseline_of(cells[0])
        if len(base) == 1 and baseline is not None and baseline in kept:
            block = _level(cells[0], "model.init_args.block")
            weights = [(c, 1 / len(cells)) for c in cells] + [(baseline, -1.0)]
            effect = _contrast(weights, [weights], study.metric, study.goal, f"{block} (all {len(cells)} groups)",
                               "vs baseline", (baseline.label, f"{block} (mean of {len(cells)} groups)"), rng)
            effects += [effect] if effect else []
    else:
        design = "each group against its baseline (the no-block group that differs in the block alone)"
        for group in cells:
            baseline = study.baseline_of(group)
            if baseline is None or baseline not in kept:
                left_out.append(f"{group.label}: no baseline that differs from it in the block alone")
                continue
            weights = [(group, 1.0), (baseline, -1.0)]
            effect = _contrast(weights, [weights], study.metric, study.goal, group.label, "vs baseline",
                               (baseline.label, group.label), rng)
            effects += [effect] if effect else []
    adjusted = holm([e.p for e in effects if e.p is not None])
    for effect, p_adj in zip([e for e in effects if e.p is not None], adjusted):
        effect.p_adj = p_adj
    for effect in effects:
        _judge(effect, study.goal, len(effects))
    floor = baselines[0].final(study.metric) if len(baselines) == 1 else None
    return Answers(effects, design, floor.std if floor else None, floor.n if floor else 0, left_out)


def _factorial(cells: list[Group], factors: dict[str, list[str]], study: Study, rng) -> list[Effect]:
    index = {tuple(_level(g, k) for k in factors): g for g in cells}
    keys = list(factors)
    effects = []
    for key in keys:
        tested, *references = factors[key]
        others = [k for k in keys if k != key]
        for reference in references:
            units = []
            for rest in itertools.product(*(factors[k] for k in others)):
                at = dict(zip(others, rest))
                units.append([(index[tuple({**at, key: tested}[k] for k in keys)], 1.0),
                              (index[tuple({**at, key: reference}[k] for k in keys)], -1.0)])
            weights = [(g, w / len(units)) for unit in units for g, w in unit]
            effect = _contrast(weights, units, study.metric, study.goal, key, "main", (reference, tested), rng)
            effects += [effect] if effect else []
    two_level = [k for k in keys if len(factors[k]) == 2]
    for k, l in itertools.combinations(two_level, 2):
        others = [o for o in keys if o not in (k, l)]
        units = []
        for rest in itertools.product(*(factors[o] for o in others)):
            at = dict(zip(others, rest))
            unit = []
            for level_k, level_l in itertools.product(factors[k], factors[l]):
                sign = (1 if level_k == factors[k][0] else -1) * (1 if level_l == factors[l][0] else -1)
                unit.append((index[tuple({**at, k: level_k, l: level_l}[o] for o in keys)], float(sign)))
            units.append(unit)
        weights = [(g, w / len(units)) for unit in units for g, w in unit]
        name = f"{k.rsplit('.', 1)[-1]} × {l.rsplit('.', 1)[-1]}"
        levels = (f"{l.rsplit('.', 1)[-1]}={factors[l][1]}", f"{l.rsplit('.', 1)[-1]}={factors[l][0]}")
        effect = _contrast(weights, units, study.metric, study.goal, name, "interaction", levels, rng)
        if effect:
            effect.knob = name
            effects.append(effect)
    return effects


def seeds_needed(effect: Effect) -> int | None:
    """Seeds per group for the normal-theory 95% half-width, z s / sqrt(n units), to reach the
    observed effect: n >= (z s / delta)^2 units, i.e. that / units-per-seed seeds."""
    if effect.spread is None or effect.delta == 0:
        return None
    z = stats.norm.ppf(0.5 + CONFIDENCE / 2)
    needed = math.ceil((z * effect.spread / abs(effect.delta)) ** 2 / effect.per_seed)
    return max(needed, effect.seeds + 1)


def _judge(effect: Effect, goal: str, contrasts: int) -> None:
    if effect.ci_low is None:
        effect.verdict = "too few runs: each group needs 2 or more seeds for an interval"
        return
    if not effect.excludes_zero:
        effect.seeds_needed = seeds_needed(effect)
        more = (f"; about {effect.seeds_needed} seeds would exclude 0 at this effect"
                if effect.seeds_needed else "")
        effect.verdict = "within noise: the interval includes 0" + more
        return
    if effect.p_adj is None or effect.p_adj >= ALPHA:
        effect.verdict = (f"unclear: the interval excludes 0 but p_adj {effect.p_adj:.2g} ≥ {ALPHA} after "
                          f"Holm over {contrasts} contrasts")
        return
    if effect.kind == "interaction":
        effect.verdict = f"interacts: the effect of {effect.knob.split(' × ')[0]} depends on {effect.knob.split(' × ')[1]}"
        return
    better = effect.delta > 0 if goal == "maximize" else effect.delta < 0
    effect.verdict = "helps" if better else "hurts"
