"""The DeMix search loop: pool -> rounds (propose, evaluate as array jobs, refit) -> final mixture + report.

    result = run_search(experiment, "work/experiment.yaml", executor, resume=True)
    result["mixture"]                  # {candidate: ratio}, sums to 1 (also in <work_dir>/search/final_mixture.json)
    search_status(experiment)          # rounds done, evaluations, the current best predicted mixture

Steps, in order (each one's output is on disk before the next starts, so `resume` continues):
1. the prior (`search.prior` or the prepared token prior), the caps, and the pool of candidate mixtures;
2. round 0: a random subset of the pool; round r > 0: fit the surrogate on every result so far and let
   the acquisition pick mixtures not yet evaluated (policy.py: the decisions, on arrays);
3. evaluate the round (rounds.py: array jobs, retries, re-attachment); go on with the mixtures that
   succeeded when they are enough (`enough_results`), else stop with one line naming the failures;
4. refit on everything; the answer is the predicted best mixture; its own proxy is evaluated like any
   other and checked against the best evaluated mixture; write final_mixture.json, the next stage's
   data blend (next_stage.py) and the report.

A search goes on after it finished or while it runs (`Search.extend`, state.py `SearchPlan`): `more_rounds`
adds rounds; a candidate added to the experiment starts a phase on the enlarged simplex (its own pool, its
first round drawn at random from it, then the configured rounds after the first), with every earlier
evaluation as data at the added candidates' share 0: results are read by candidate name. An answer already
evaluated becomes data too (answer-<i>/), and the answer is chosen and evaluated again.
"""
from __future__ import annotations

import logging
import math
import pickle
import time

import numpy as np

from megatron_demix.cluster.executor import Executor, Terminated, terminate_on_sigterm
from megatron_demix.runtime.errors import FAILED
from megatron_demix.runtime.files import atomic_write_bytes, atomic_write_json, read_json
from megatron_demix.search.objective import composite, target_stderrs, target_values, targets_of, typical_noise
from megatron_demix.search.policy import Evidence, Surrogate, check_answer, choose_answer, propose
from megatron_demix.search.rounds import Runner, failures_by_mixture, evaluate_round
from megatron_demix.search.sampler import MixtureSpace, resolve_prior, token_caps
from megatron_demix.search.state import RoundPaths, SearchPaths, SearchPlan, check_settings, settings_of

log = logging.getLogger(__name__)
MIN_FIT_POINTS = 3
"""Fewest evaluated mixtures a fit takes: its cross-validation leaves one out, LightGBM needs two rows to
train on, and a Spearman rank correlation three pairs."""


class SearchStopped(RuntimeError):
    """Too few evaluations succeeded for the search to go on, or the driver was stopped (SIGTERM)."""
    exit_status = FAILED


class Search:
    """One experiment's search: its space, pool and state directory, and the fits over its results."""

    def __init__(self, experiment):
        self.experiment = experiment
        self.config = experiment.search
        self.prior = resolve_prior(experiment)
        self.caps = token_caps(experiment)
        self.space = MixtureSpace.build(self.prior, self.config, self.caps)
        self.names = self.space.names
        self.paths = SearchPaths.of(experiment)
        self.plan = SearchPlan.read(self.paths, self.config.sizes, self.names)

    def pool(self) -> np.ndarray:
        """The current phase's pool (its simplex: the candidates of this phase)."""
        phase = len(self.plan.phases) - 1
        path = self.paths.pool_of(phase)
        if path.exists():
            return np.load(path)
        start = time.perf_counter()
        pool = self.space.sample(self.config.pool_size, np.random.default_rng([self.config.seed, phase] if phase else self.config.seed))
        log.info("pool: %d candidate mixtures of %d datasets in %.1fs", len(pool), len(self.names), time.perf_counter() - start)
        _save_array(path, pool)
        return pool

    def rounds(self) -> list[RoundPaths]:
        return [self.paths.round(r) for r in range(len(self.plan.rounds))]

    def data_rounds(self) -> list[RoundPaths]:
        """Every folder of evaluations the fits use: the rounds, then the earlier answers' own evaluations."""
        return self.rounds() + self.paths.answers()

    def results(self, include_final: bool = False) -> list[dict]:
        """Every successful evaluation so far, each with its round's name."""
        found = []
        for round_paths in self.data_rounds() + ([self.paths.final] if include_final else []):
            found += [{**result, "round": round_paths.name} for result in round_paths.read_results().values()]
        return found

    def extend(self, more_rounds: int = 0, round_size: int | None = None) -> None:
        """Record in plan.json what this run adds: the experiment's new candidates (a phase, state.py SearchPlan)
        and `more_rounds` rounds of `round_size` (default: the last configured round's). When it adds rounds to a
        finished search, its answer is void: its evaluation becomes data (answer-<i>/) and the answer is chosen again."""
        plan = self.plan
        started = sum(1 for r in self.rounds() if r.proposals.exists())
        added = plan.add_candidates(self.names, started, self.config.sizes[1:] or self.config.sizes)
        if added and not started:
            self.paths.pool.unlink(missing_ok=True)  # drawn over the earlier list, before any round used it
        elif added:
            log.info("candidate(s) %s added: a new phase from round %d on %d candidates, %d earlier evaluations kept"
                     " (at share 0 of %s)", ", ".join(added), started, len(self.names), len(self.results()), ", ".join(added))
        if more_rounds:
            plan.rounds += [round_size or self.config.sizes[-1]] * more_rounds
            log.info("%d more round(s) of %d: rounds %s", more_rounds, plan.rounds[-1], plan.rounds)
        if not (added or more_rounds):
            if not self.paths.plan.exists() and self.paths.root.exists():
                plan.save(self.paths)
            return
        self.paths.final_mixture.unlink(missing_ok=True)
        if self.paths.final.folder.exists():
            answer = self.paths.root / f"answer-{len(self.paths.answers())}"
            self.paths.final.folder.rename(answer)
            log.info("the earlier answer's evaluation is kept as data in %s", answer)
        plan.save(self.paths)

    def matrix(self, results: list[dict], targets: list[str]) -> tuple[np.ndarray, np.ndarray]:
        # By name: an evaluation made before candidates were added has them at share 0.
        X = np.array([[r["mixture"].get(n, 0.0) for n in self.names] for r in results], dtype=np.float64)
        lower = self.experiment.eval.lower_is_better
        Y = np.array([target_values(r, targets, self.config.objective, lower) for r in results], dtype=np.float64)
        return X, Y

    def evidence(self, results: list[dict]) -> Evidence:
        targets = targets_of(results, self.config.objective)
        X, Y = self.matrix(results, targets)
        errors = [target_stderrs(r, targets, self.config.objective) for r in results]
        stderr = np.array([e if e is not None else [np.nan] * len(targets) for e in errors], dtype=np.float64)
        return Evidence(X, Y, targets, stderr)

    def fit(self, results: list[dict], pool: np.ndarray, ensemble: bool = False) -> Surrogate:
        evidence = self.evidence(results)
        start = time.perf_counter()
        surrogate = Surrogate.fit(evidence, pool, self.space.prior, self.config, ensemble=ensemble)
        predictor = surrogate.predictor
        log.info("fitted %s on %d points in %.1fs; cross-validated Spearman: %s", "/".join(sorted(set(predictor.kinds))),
                 len(evidence.X), time.perf_counter() - start,
                 ", ".join(f"{t} {max(v.values()):.2f}" for t, v in predictor.cv_spearman.items()))
        return surrogate

    def measured_scores(self, evidence: Evidence) -> np.ndarray:
        """The measured composite score of each evaluation, ranks or spreads taken over all of them."""
        return composite(evidence.Y, evidence.Y, evidence.targets, self.config.objective, self.config.domain_weights,
                         measured=evidence.Y, noise=typical_noise(evidence.stderr))

    def propose(self, r: int, size: int, pool: np.ndarray) -> list[dict]:
        rng = np.random.default_rng([self.config.seed, r])
        if r == self.plan.phases[self.plan.phase_of(r)]["first_round"]:  # round 0, or a phase's: nothing known of its new candidates
            chosen = rng.choice(len(pool), size=min(size, len(pool)), replace=False)
            return [self._proposal(r, i, pool[p], int(p)) for i, p in enumerate(chosen)]
        surrogate = self.fit(self.results(), pool)
        predictor = surrogate.predictor
        round_paths = self.paths.round(r)
        atomic_write_bytes(round_paths.model, pickle.dumps(predictor))
        atomic_write_json(round_paths.cv, {"points": len(surrogate.evidence.X), "kinds": dict(zip(predictor.targets, predictor.kinds)),
                                           "cv_spearman": predictor.cv_spearman})
        _save_array(round_paths.scores, surrogate.score(surrogate.reference))
        rows, predicted, scores = propose(surrogate, pool, self.space, size, rng)
        return [self._proposal(r, i, row, _pool_index(pool, row), predicted[i], scores[i], predictor.targets)
                for i, row in enumerate(rows)]

    def _proposal(self, r, i, row, pool_index, predicted=None, score=None, targets=()) -> dict:
        proposal = {"id": f"r{r}-{i:04d}", "pool_index": pool_index, "mixture": dict(zip(self.names, row.tolist()))}
        if predicted is not None:
            proposal.update(predicted=dict(zip(targets, predicted.tolist())), predicted_score=float(score))
        return proposal


def _pool_index(pool: np.ndarray, row: np.ndarray) -> int:
    """The row's index in the pool, or -1 for a local candidate (drawn around the best predicted)."""
    match = np.flatnonzero(np.abs(pool - row).sum(axis=1) < 1e-9)
    return int(match[0]) if len(match) else -1


def _save_array(path, array: np.ndarray) -> None:
    """np.save under a temporary name, then rename (never a half-written .npy)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        np.save(f, array)
    tmp.replace(path)


def enough_results(round_paths: RoundPaths, outcome: dict, size: int, min_results: int | None, total: int) -> None:
    """Enough is: the round's own `search.min_results` (unset: half the round) and, over every round so far,
    the MIN_FIT_POINTS evaluated mixtures the next fit takes. Short of either, SearchStopped."""
    needed = min(min_results, size) if min_results else math.ceil(size / 2)
    succeeded = len(outcome["results"])
    if succeeded >= needed and total >= MIN_FIT_POINTS:
        if outcome["failed"]:
            log.warning("%s: %d mixture(s) failed (retried on --resume), going on with %d results: %s", round_paths.name,
                        len(outcome["failed"]), succeeded, _describe_failures(outcome["failed"]))
        return
    short = (f"search.min_results needs {needed}" if succeeded < needed else
             f"the predictor needs {MIN_FIT_POINTS} evaluated mixtures to fit, the search has {total}")
    raise SearchStopped(f"{round_paths.name}: only {succeeded} of {size} evaluations succeeded ({short}); failures: "
                        f"{_describe_failures(outcome['failed'])}. Fix the evaluation, then re-run with --resume (finished"
                        " evaluations are kept, failed ones evaluated again)"
                        + (", or lower search.min_results" if succeeded < needed else ""))


def _describe_failures(failed: dict[str, list[dict]]) -> str:
    """One clause per mixture: its own line of its task's last error (a batch's error has a line per mixture)."""
    return "; ".join(f"{i}: {_own_line(f[-1].get('error') or '?', i)[:300]} (log: {f[-1].get('log')})" for i, f in failed.items())


def _own_line(error: str, mixture_id: str) -> str:
    lines = [line.strip() for line in error.splitlines()]
    return next((line[len(mixture_id) + 2:] for line in lines if line.startswith(f"{mixture_id}: ")), lines[0] if lines else "?")


def check_resumable(experiment, resume: bool) -> Search:
    """The experiment's search, after checking its prior and that its state directory may be (re)used."""
    search = Search(experiment)
    check_settings(search.paths, settings_of(experiment, search.prior), resume)
    return search


def run_search(experiment, config_path, executor: Executor, resume: bool = False, more_rounds: int = 0,
               round_size: int | None = None) -> dict:
    """Run (or with `resume`, continue) the search; returns the final_mixture.json content. A SIGTERM ends the
    evaluations running on this machine first (SLURM jobs run on and are re-attached by --resume). Candidates added
    to the experiment since, and `more_rounds` (rounds of `round_size`), extend it (`Search.extend`)."""
    try:
        with terminate_on_sigterm():
            return _run_search(experiment, config_path, executor, resume, more_rounds, round_size)
    except Terminated:
        raise SearchStopped("stopped by SIGTERM; its local evaluation processes were ended (SLURM jobs keep running"
                            " and are re-attached); continue with --resume") from None


def _run_search(experiment, config_path, executor: Executor, resume: bool, more_rounds: int, round_size: int | None) -> dict:
    search = check_resumable(experiment, resume)
    paths = search.paths
    paths.root.mkdir(parents=True, exist_ok=True)
    search.extend(more_rounds, round_size)
    atomic_write_json(paths.settings, settings_of(experiment, search.prior))
    pool = search.pool()
    runner = Runner.make(executor, config_path, experiment)
    sizes = search.plan.rounds
    for r, size in enumerate(sizes):
        round_paths = paths.round(r)
        proposals = round_paths.read_proposals()
        if proposals is None:
            proposals = search.propose(r, size, pool)
            atomic_write_json(round_paths.proposals, proposals)
        # A round begun before candidates were added evaluates what is left of it with them at share 0.
        proposals = [{**p, "mixture": {n: p["mixture"].get(n, 0.0) for n in search.names}} for p in proposals]
        phase = search.plan.phases[search.plan.phase_of(r)]
        log.info("round %d/%d: %d mixtures (%s)", r + 1, len(sizes), len(proposals),
                 "random from the pool" if r == phase["first_round"] else search.config.acquisition)
        outcome = evaluate_round(round_paths, proposals, runner)
        enough_results(round_paths, outcome, size, search.config.min_results, len(search.results()))
    return finish(search, pool, runner)


def finish(search: Search, pool: np.ndarray, runner: Runner) -> dict:
    """The answer: the predicted best mixture, its own evaluation and the check against the best evaluated
    one; final_mixture.json, the next stage's blend and the report."""
    from megatron_demix.search.next_stage import write_next_stage
    from megatron_demix.search.report import write_report

    config, experiment = search.config, search.experiment
    results = search.results()
    surrogate = search.fit(results, pool, ensemble=True)
    predictor, targets = surrogate.predictor, surrogate.evidence.targets
    choice = choose_answer(surrogate, pool, search.space, np.random.default_rng([config.seed, len(search.plan.rounds)]))
    final = choice.mixture
    final_predicted = predictor.predict(final[None, :])
    # The spread of the bootstrap members at the final mixture, per target and on the composite.
    member_values = (np.concatenate([m.predict(final[None, :]) for m in surrogate.members]) if surrogate.members
                     else np.empty((0, len(targets))))
    member_scores = surrogate.score(member_values) if surrogate.members else np.empty(0)
    answer = {
        "mixture": dict(zip(search.names, final.tolist())),
        "rule": choice.rule,
        "reason": choice.reason,
        "predicted_best": dict(zip(search.names, final.tolist())),
        "beta": experiment.training.beta,
        "effective_shares": effective_shares(experiment, search.names, final),
        "prior": search.prior,
        "caps": dict(zip(search.names, search.space.upper.tolist())),
        "objective": config.objective,
        "domain_floors": {t: float(f) for t, f in zip(targets, surrogate.floor) if np.isfinite(f)},
        "targets": targets,
        "predicted": {"score": float(surrogate.score(final_predicted)[0]),
                      "uncertainty": float(member_scores.std()) if len(member_scores) else None,
                      "ensemble_mean": float(member_scores.mean()) if len(member_scores) else None,
                      "targets": dict(zip(targets, final_predicted[0].tolist())),
                      "target_uncertainty": dict(zip(targets, member_values.std(axis=0).tolist())) if surrogate.members else None,
                      "prior_targets": dict(zip(targets, surrogate.prior_predicted.tolist()))},
        "cv_spearman": predictor.cv_spearman,
        "predictor": dict(zip(targets, predictor.kinds)),
        "top_k": int(config.top_k) if choice.rule == "top_k_mean" else 1,
        "evaluations": len(results),
        "rounds": search.plan.rounds,
        "phases": search.plan.phases,
        "measured": None,
        "check": None,
    }
    if config.evaluate_final:
        proposals = [{"id": "final", "pool_index": -1, "mixture": answer["mixture"]}]
        atomic_write_json(search.paths.final.proposals, proposals)
        outcome = evaluate_round(search.paths.final, proposals, runner)
        if "final" in outcome["results"]:
            _measure_and_check(search, pool, answer, choice)
        else:
            log.warning("the final mixture's own evaluation failed: %s", _describe_failures(outcome["failed"]))
    write_next_stage(search.paths, experiment, answer, runner.config_path)
    atomic_write_json(search.paths.final_mixture, answer)
    write_report(search, pool, answer, surrogate.score(surrogate.reference))
    log.info("final mixture (%s): %s", answer["rule"], ", ".join(f"{k} {v:.3f}" for k, v in answer["mixture"].items()))
    return answer


def _measure_and_check(search: Search, pool: np.ndarray, answer: dict, choice) -> None:
    """Record the answer's measured score, and keep it only if it is not worse than the best evaluated
    mixture beyond the evaluation noise (policy.check_answer); otherwise answer with that one."""
    everything = search.results(include_final=True)
    targets = answer["targets"]
    evidence = search.evidence(everything)
    Y, measured = evidence.Y, search.measured_scores(evidence)
    index = next(i for i, r in enumerate(everything) if r["round"] == "final")
    answer["measured"] = {"score": float(measured[index]), "targets": dict(zip(targets, Y[index].tolist())),
                          "metrics": everything[index]["metrics"],
                          "rank": int(1 + np.sum(measured > measured[index])), "of": len(everything)}
    answer["best_measured"] = best_measured(everything, measured, Y, index, targets, search.config.objective)
    refit = Surrogate.fit(evidence, pool, search.space.prior, search.config, cross_validate=False)
    kept, check = check_answer(refit, choice, index)
    best, chosen = everything[check["best_index"]], everything[check.get("chosen_index", index)]
    answer["check"] = {**{k: v for k, v in check.items() if k not in ("best_index", "chosen_index")},
                       "best_id": best["id"], "chosen_id": chosen["id"], "reason": kept.reason}
    if not check["kept"]:
        log.warning("the predicted best mixture measured below the best evaluated one beyond the noise: answering %s",
                    chosen["id"])
        answer.update(mixture=dict(zip(search.names, kept.mixture.tolist())), rule=kept.rule, reason=kept.reason,
                      effective_shares=effective_shares(search.experiment, search.names, kept.mixture))


def effective_shares(experiment, names: list[str], mixture: np.ndarray) -> dict[str, float]:
    """The next stage's blend: beta general data plus (1 - beta) x the candidates' mixture."""
    beta = experiment.training.beta
    return {experiment.general.name: beta, **{n: (1 - beta) * float(v) for n, v in zip(names, mixture)}}


def best_measured(everything: list[dict], measured: np.ndarray, Y: np.ndarray, final: int, targets: list[str],
                  objective: str) -> dict:
    """The best evaluated mixture, and how the final mixture's measured targets differ from it in units of
    their standard error: a rank among proxies can turn differences far inside the evaluation's noise
    into a large gap, and this says whether it did. `z` is (final - best) / sqrt(se_final^2 + se_best^2)."""
    best = int(np.argmax(measured))
    entry = {"id": everything[best]["id"], "round": everything[best]["round"], "mixture": everything[best]["mixture"],
             "score": float(measured[best]), "targets": dict(zip(targets, Y[best].tolist())), "difference": None}
    errors = [target_stderrs(everything[i], targets, objective) for i in (final, best)]
    if best != final and None not in errors:
        se = np.hypot(errors[0], errors[1])
        diff = Y[final] - Y[best]
        entry["difference"] = {t: {"final_minus_best": float(d), "stderr": float(e), "z": float(d / e) if e > 0 else None}
                               for t, d, e in zip(targets, diff, se)}
    return entry


def search_status(experiment) -> dict:
    """Where a search stands, from its state directory alone (no scheduler call): for `demix status`."""
    search = Search(experiment)
    rounds = []
    latest_scores = None
    for r, round_paths in enumerate(search.rounds()):
        proposals = round_paths.read_proposals()
        if proposals is None:
            break
        results = round_paths.read_results()
        failures = failures_by_mixture(round_paths, results)
        failed = sum(1 for f in failures.values() if len(f) > search.config.max_retries)
        rounds.append({"round": r, "size": len(proposals), "done": len(results), "failed": failed,
                       "pending": len(proposals) - len(results) - failed})
        if round_paths.scores.exists():
            latest_scores = r
    best = None
    phase = None if latest_scores is None else search.plan.phase_of(latest_scores)
    if phase is not None and search.paths.pool_of(phase).exists():  # the pool that round's scores are of
        pool, scores = np.load(search.paths.pool_of(phase)), np.load(search.paths.round(latest_scores).scores)
        top = np.argsort(-scores, kind="stable")[: search.config.top_k if search.config.final == "top_k_mean" else 1]
        best = dict(zip(search.plan.phases[phase]["candidates"], pool[top].mean(axis=0).tolist()))
    final = search.paths.final_mixture
    return {"rounds": rounds, "planned": search.plan.rounds, "best_predicted_mixture": best,
            "final": read_json(final, "the search's final mixture", "delete it and resume (--resume) to choose it again") if final.exists() else None}
