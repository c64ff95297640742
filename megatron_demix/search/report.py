"""The search report, `<work_dir>/search/report/`: final_mixture.json, summary.md and three plots.

- predicted_vs_measured.png: per target, each round's predicted score (by the predictor that
  proposed it) against the measured one: whether the surrogate could be trusted, round by round;
- final_vs_prior.png: the final mixture's shares next to the prior's;
- scores_by_round.png: the measured composite score of every evaluated mixture, per round
  (round 0 is random search; the final mixture is marked).
"""
from __future__ import annotations

import json

import numpy as np

from megatron_demix.runtime.files import atomic_write_json, atomic_write_text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_predicted_vs_measured(search, targets: list[str], output) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(targets), figsize=(4 * len(targets), 3.8), squeeze=False)
    for t, (ax, target) in enumerate(zip(axes[0], targets)):
        for round_paths in search.rounds()[1:]:
            proposals = {p["id"]: p for p in round_paths.read_proposals() or [] if "predicted" in p}
            pairs = [(proposals[i]["predicted"][target], search.matrix([r], targets)[1][0, t])
                     for i, r in round_paths.read_results().items() if i in proposals]
            if pairs:
                x, y = zip(*pairs)
                ax.scatter(x, y, s=18, label=round_paths.name)
        low, high = ax.get_xlim()
        ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
        ax.set_xlabel(f"predicted {target}")
        ax.set_ylabel(f"measured {target}")
        ax.legend(fontsize=8)
    fig.suptitle("Predicted (when proposed) vs measured, per round")
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


def plot_final_vs_prior(names: list[str], final: dict, prior: dict, output) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(names), 3.8))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [prior[n] for n in names], 0.4, label="prior")
    ax.bar(x + 0.2, [final[n] for n in names], 0.4, label="final mixture")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("share")
    ax.set_ylim(0, 1.3 * max(max(final.values()), max(prior.values())))  # room for the legend
    ax.set_title("Final mixture against the prior")
    ax.legend(ncol=2)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


def plot_scores_by_round(names: list[str], scores: dict[str, np.ndarray], final_score: float | None, output) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(names), 3.8))
    data = [scores[n] for n in names]
    ax.boxplot(data, showfliers=False)
    for i, values in enumerate(data, start=1):
        ax.scatter(np.full(len(values), i) + np.random.default_rng(i).uniform(-0.12, 0.12, len(values)), values, s=10, alpha=0.6)
    if final_score is not None:
        ax.axhline(final_score, color="red", lw=1, label="final mixture")
        ax.legend(fontsize=8)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel("measured composite score (higher is better)")
    ax.set_title("Score distribution per round")
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


def write_report(search, pool: np.ndarray, answer: dict, pool_scores: np.ndarray) -> None:
    report = search.paths.report
    report.mkdir(parents=True, exist_ok=True)
    atomic_write_json(report / "final_mixture.json", answer)
    targets = answer["targets"]
    everything = search.results(include_final=True)
    measured = search.measured_scores(search.evidence(everything))
    by_round: dict[str, list[float]] = {}
    for result, score in zip(everything, measured):
        by_round.setdefault(result["round"], []).append(float(score))
    rounds = [r.name for r in search.data_rounds() if r.name in by_round]
    final_score = answer["measured"]["score"] if answer["measured"] else None
    plot_predicted_vs_measured(search, targets, report / "predicted_vs_measured.png")
    plot_final_vs_prior(search.names, answer["mixture"], answer["prior"], report / "final_vs_prior.png")
    plot_scores_by_round(rounds, {r: np.array(by_round[r]) for r in rounds}, final_score, report / "scores_by_round.png")
    atomic_write_text(report / "summary.md", summary_markdown(search, answer, by_round, rounds))


def summary_markdown(search, answer: dict, by_round: dict, rounds: list[str]) -> str:
    lines = [f"# Mixture search: {search.experiment.name}", "",
             f"{answer['evaluations']} evaluations in rounds of {answer['rounds']}; objective `{answer['objective']}`; "
             f"final mixture ({answer['rule']}): {answer['reason']}.", "",
             "| candidate | prior | cap | final mixture | effective share (beta = %.2f) |" % answer["beta"], "|---|---|---|---|---|"]
    caps = answer.get("caps", {})
    lines += [f"| {n} | {answer['prior'][n]:.4f} | {caps.get(n, 1.0):.4f} | {answer['mixture'][n]:.4f} | "
              f"{answer['effective_shares'][n]:.4f} |" for n in search.names]
    general = search.experiment.general.name
    lines += [f"| {general} (general, in every component) | | | | {answer['effective_shares'][general]:.4f} |", ""]
    if answer.get("domain_floors"):
        lines += ["Domain floors (lowest predicted score allowed, from the token prior's prediction): "
                  + ", ".join(f"{t} {v:.4f}" for t, v in answer["domain_floors"].items()), ""]
    lines += final_lines(answer, search.config.ensemble_size)
    lines += check_lines(answer)
    lines += next_stage_lines(answer)
    lines += phase_lines(search)
    lines += ["", "## Rounds", "", "| round | candidates | evaluated | best measured | median measured | CV Spearman of its predictor |",
              "|---|---|---|---|---|---|"]
    for r in rounds:
        cv_file = search.paths.root / r / "cv.json"
        cv = json.loads(cv_file.read_text())["cv_spearman"] if cv_file.exists() else {}
        cv_text = ", ".join(f"{t}: " + "/".join(f"{k} {v:.2f}" for k, v in kinds.items()) for t, kinds in cv.items()) or "- (random)"
        values = by_round[r]
        lines.append(f"| {r} | {candidates_of(search, r)} | {len(values)} | {max(values):.3f} | {float(np.median(values)):.3f} | {cv_text} |")
    lines += ["", "Final predictor, cross-validated Spearman (out-of-fold predictions vs measured): "
              + ", ".join(f"{t}: " + "/".join(f"{k} {v:.2f}" for k, v in kinds.items()) for t, kinds in answer["cv_spearman"].items()),
              "", "Plots: predicted_vs_measured.png, final_vs_prior.png, scores_by_round.png.", ""]
    return "\n".join(lines)


def candidates_of(search, round_name: str) -> str:
    """How many candidates a round's mixtures were drawn over, marked when candidates were added after it."""
    plan = search.plan
    if not round_name.startswith("round-"):
        return "-"  # an earlier answer: made before the rounds that follow it
    phase = plan.phase_of(int(round_name.split("-")[1]))
    later = [n for p in plan.phases[phase + 1:] for n in p["added"]]
    count = len(plan.phases[phase]["candidates"])
    return f"{count} (before {', '.join(later)} was added)" if later else str(count)


def phase_lines(search) -> list[str]:
    """One line per addition of candidates: where it happened and how many evaluations it kept."""
    lines = []
    for phase in search.plan.phases[1:]:
        kept = sum(len(r.read_results()) for r in search.rounds()[:phase["first_round"]])
        lines.append(f"- {', '.join(phase['added'])} added before round {phase['first_round']}: the {kept} evaluations"
                     f" made before (and any earlier answer's) are data at {', '.join(phase['added'])} = 0 (exact: a merged"
                     f" proxy depends only on the components and the weights); round {phase['first_round']} drew at"
                     " random from the enlarged simplex.")
    return ["", "## Candidates added during the search", "", *lines] if lines else []


def final_lines(answer: dict, ensemble_size: int) -> list[str]:
    """The final mixture's predicted and measured scores, and how it compares with the best evaluated mixture."""
    predicted = answer["predicted"]
    spread = predicted.get("target_uncertainty") or {}
    measured = (answer["measured"] or {}).get("targets", {})

    def cell(values: dict, target: str) -> str:
        return f"{values[target]:.4f}" if target in values else "-"

    lines = ["| target | predicted | +- (std over %d bootstrap fits) | measured |" % ensemble_size, "|---|---|---|---|"]
    lines += [f"| {t} | {v:.4f} | {cell(spread, t)} | {cell(measured, t)} |" for t, v in predicted["targets"].items()]
    lines += ["", f"Predicted composite score of the final mixture: {predicted['score']:.3f}."]
    if not answer["measured"]:
        return lines + ["Measured: not evaluated (search.evaluate_final is false, or its evaluation failed)."]
    m = answer["measured"]
    lines.append(f"Measured (its own proxy): {m['score']:.3f}, rank {m['rank']} of {m['of']} evaluated mixtures.")
    best = answer.get("best_measured")
    if best and best["round"] != "final":
        shares = ", ".join(f"{k} {v:.3f}" for k, v in best["mixture"].items())
        lines += ["", f"Best evaluated mixture: {best['id']} ({best['round']}; {shares}), measured {best['score']:.3f}."]
        if best["difference"]:
            lines += ["", "| target | final - best | standard error | z |", "|---|---|---|---|"]
            lines += [f"| {t} | {d['final_minus_best']:+.4f} | {d['stderr']:.4f} | " + (f"{d['z']:+.2f} |" if d["z"] is not None else "- |")
                      for t, d in best["difference"].items()]
            lines += ["", versus_best(answer)]
    return lines


def check_lines(answer: dict) -> list[str]:
    """Whether the predicted best survived its own measurement (policy.check_answer)."""
    check = answer.get("check")
    if not check:
        return []
    noise = f"{check['noise']:.4f}"
    verdict = ("kept: it is not worse than the best evaluated mixture beyond the noise" if check["kept"]
               else f"replaced by {check['chosen_id']}: {check['reason']}")
    return ["", "## The answer, checked", "",
            f"Predicted best measured {check['measured']:.3f}; best evaluated ({check['best_id']}) {check['best_measured']:.3f}; "
            f"gap {check['gap']:+.3f}, standard error of the gap {noise}, tolerance {check['tolerance']} standard errors: {verdict}."]


def next_stage_lines(answer: dict) -> list[str]:
    stage = answer.get("next_stage")
    if not stage:
        return []
    return ["", "## Next stage", "",
            f"Megatron-LM: `{stage['megatron_lm_flags']}` (or `--data-path $(cat {stage['data_path']})`).",
            f"This project's trainer ({stage['train_iters']} iterations, from the base): `{stage['train_command']}`,",
            f"or as a SLURM job: `{stage['sbatch_command']}`."]


def versus_best(answer: dict) -> str:
    """One sentence: how the final mixture's measured proxy compares with the best evaluated mixture."""
    best = answer.get("best_measured")
    if not best or best["round"] == "final":
        return "Its own proxy is the best of all evaluated mixtures."
    if not best["difference"]:
        return f"The best evaluated mixture is {best['id']} (no standard errors to say whether the gap is noise)."
    z = {target: d["z"] for target, d in best["difference"].items() if d["z"] is not None}
    if min(z.values(), default=0.0) >= -2:
        ahead = [target for target, value in z.items() if value > 2]
        return (f"It is nowhere below the best evaluated mixture ({best['id']}) by more than two standard errors"
                + (f", and above it by more than two on {', '.join(ahead)}" if ahead else "")
                + ": the composite's rank gap is inside the evaluation's noise.")
    return (f"The best evaluated mixture ({best['id']}) is ahead by more than two standard errors on some target:"
            " consider it, or more rounds (the predictor may be extrapolating).")
