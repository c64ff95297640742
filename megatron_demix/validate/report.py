"""`demix validate`'s outputs, under <work_dir>/validate/:

- evaluations.csv (raw): one row per (evaluated model, task): method, mixture, domain, metric, value,
  its standard error, whether it enters the domain score negated, whether it is accuracy-type;
- scores.csv: one row per (method, mixture): shares, each domain score with its standard error (blank
  for the nulls, which are no evaluation) and accuracy-type score (recovery's input); also the
  replicate, component and quality models;
- fidelity.csv: one row per (method, domain or `macro`), then per (demix - other, domain), then the
  noise ceiling: mixtures, training tokens, every metric with its 95% paired-bootstrap interval;
- fidelity.md: Table 2 (macro, with intervals, the nulls and the ceiling), per domain, the
  differences, the replicates, token accounting, Table 3 with rank bands, undefined metrics;
- fidelity.json: the same numbers for programs; mixture_quality.md / .csv: Table 3;
- proxy_vs_reference.png (per method and domain), rho_vs_compute.png (macro rho with intervals
  against training tokens), replicates.png (each replicated mixture's two trainings against the
  references' spread).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path


from megatron_demix.runtime.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from megatron_demix.search.report import _pyplot
from megatron_demix.validate.fidelity import CEILING_METRICS, COMPONENT, QUALITY, REFERENCE, REPLICATE, Evaluations, measure
from megatron_demix.validate.metrics import METRICS
from megatron_demix.validate.nulls import task_rows

LABELS = {"rho": "rho", "top25_rho": "top-25% rho", "recovery": "recovery", "kendall_tau": "Kendall tau", "regret": "regret"}
CEILING = "noise-ceiling"


def _csv(header: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _with_interval(value, interval, digits: int = 3) -> str:
    return _number(value, digits) + (f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else "")


def evaluations_csv(ev: Evaluations) -> str:
    rows = []
    for model_id, method, mixture in ev.models():
        for r in task_rows(ev.records[model_id], ev.plan):
            rows.append([model_id, method, mixture, r["domain"], r["task"], r["metric"], repr(r["value"]),
                         "" if r["stderr"] is None else repr(r["stderr"]), int(r["negated"]), int(r["accuracy"])])
    return _csv(["model", "method", "mixture", "domain", "task", "metric", "value", "stderr", "negated", "accuracy"], rows)


def scores_csv(ev: Evaluations) -> str:
    domains, candidates = ev.domains, ev.candidates
    rows = []

    def add(method: str, mixture: str, shares: dict, scores: dict, record: dict | None, accuracy: dict | None):
        stderrs = (record or {}).get("domain_stderrs", {})
        rows.append([method, mixture, *(shares.get(n, 0.0) for n in candidates),
                     *(repr(scores[d]) for d in domains), *(repr(stderrs[d]) if d in stderrs else "" for d in domains),
                     *(repr(accuracy[d]) if accuracy and d in accuracy else "" for d in domains)])

    shares = {m["id"]: m["mixture"] for m in ev.mixtures}
    for method, per_mixture in ev.scores.items():
        for i in ev.ids:
            add(method, i, shares[i], per_mixture[i], ev.records.get(f"{method}-{i}"), ev.accuracy.get(method, {}).get(i))
    for i, scores in sorted(ev.replicates.items()):
        add(REPLICATE, i, shares[i], scores, ev.records[f"{REPLICATE}-{i}"], None)
    for name in candidates:
        record = ev.records[f"{COMPONENT}-{name}"]
        add(COMPONENT, name, {name: 1.0}, record["domains"], record, None)
    for q in ev.quality:
        add(QUALITY, q["id"], q["mixture"], ev.quality_scores[q["id"]], ev.records[f"{QUALITY}-{q['id']}"], None)
    return _csv(["method", "mixture", *(f"share_{n}" for n in candidates), *domains, *(f"{d}_stderr" for d in domains),
                 *(f"{d}_accuracy" for d in domains)], rows)


def fidelity_csv(result: dict) -> str:
    header = ["method", "domain", "mixtures", "train_tokens"]
    for k in METRICS:
        header += [k, f"{k}_low", f"{k}_high"]
    rows = []
    for r in result["records"] + result["differences"]:
        row = [r["method"], r["domain"], r["mixtures"], "" if r["train_tokens"] is None else r["train_tokens"]]
        for k in METRICS:
            ci = r[f"{k}_ci"]
            row += ["" if r[k] is None else r[k], *(("", "") if ci is None else ci)]
        rows.append(row)
    ceiling = result["ceiling"]
    for r in ([*ceiling["domains"], {"domain": "macro", **ceiling["macro"]}] if ceiling else []):
        row = [CEILING, r["domain"], ceiling["replicates"], ""]
        for k in METRICS:
            ci = r.get(f"{k}_ci")
            row += ["" if r.get(k) is None else r[k], *(("", "") if ci is None else ci)]
        rows.append(row)
    return _csv(header, rows)


def fidelity_markdown(result: dict, ev: Evaluations, settings, command: str | None = None) -> str:
    records, tokens = result["records"], result["train_tokens"]
    n, ceiling = len(ev.ids), result["ceiling"]
    macro = [r for r in records if r["domain"] == "macro"]
    lines = [f"# Proxy fidelity against {n} reference models",
             "",
             f"Macro = mean over the domains {', '.join(ev.domains)}; 95% intervals from one paired bootstrap"
             f" ({settings.bootstrap_samples} resamples of the {n} mixtures, shared by every method and domain).",
             "",
             "| method | training tokens | rho | top-25% rho | Kendall tau | capability recovery | regret |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['train_tokens']:,} | " + " | ".join(
        _with_interval(r[k], r[f"{k}_ci"]) for k in ("rho", "top25_rho", "kendall_tau", "recovery", "regret")) + " |"
              for r in macro]
    if ceiling:
        m = ceiling["macro"]
        lines.append(f"| {CEILING} ({ceiling['replicates']} replicates) | - | "
                     + " | ".join(_with_interval(m[k], m[f"{k}_ci"]) for k in ("rho", "top25_rho", "kendall_tau"))
                     + " | - | - |")
    lines += ["", f"top-25% rho keeps k = {max(2, n // 4)} of {n} references. Capability recovery = sum(proxy) /"
              " sum(reference) of each domain's accuracy-type tasks (acc, acc_norm, exact_match, pass@k; per domain: "
              + "; ".join(f"{d}: {', '.join(t for t in ev.plan.domains[d] if _is_acc(ev, t)) or 'none'}" for d in ev.domains)
              + "); the other metrics use the domain scores (bits per byte enter negated).", ""]
    lines += ["## Per domain", "", "| method | domain | " + " | ".join(LABELS[k] for k in METRICS) + " |",
              "|---|---|" + "---|" * len(METRICS)]
    lines += [f"| {r['method']} | {r['domain']} | " + " | ".join(_with_interval(r[k], r[f"{k}_ci"]) for k in METRICS) + " |"
              for r in records if r["domain"] != "macro"]
    lines += ["", "## Differences (paired: the same resampled mixtures for both methods)", "",
              "| difference | domain | " + " | ".join(LABELS[k] for k in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    lines += [f"| {r['method']} | {r['domain']} | " + " | ".join(_with_interval(r[k], r[f"{k}_ci"]) for k in METRICS) + " |"
              for r in result["differences"]]
    if ceiling:
        lines += ["", f"## Noise ceiling ({ceiling['replicates']} references trained again with another data-order seed)", "",
                  "Noise sd: the spread of replicate - reference over the replicated mixtures, centred (the mean gap, a shift"
                  " of every mixture alike, changes no rank), / sqrt(2). Ceiling: the rank agreement of two such trainings of"
                  " every reference.", "",
                  "| domain | noise sd | mean gap | references' sd | ceiling rho | ceiling top-25% rho | ceiling Kendall tau |"
                  " pairs (reference/replicate) |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['domain']} | {r['noise_sd']:.4f} | {r['mean_gap']:+.4f} | {r['reference_sd']:.4f} | "
                  + " | ".join(_with_interval(r[k], r[f"{k}_ci"]) for k in CEILING_METRICS) + " | "
                  + ", ".join(f"{i}: {a:.4f}/{b:.4f}" for i, (a, b) in r["pairs"].items()) + " |" for r in ceiling["domains"]]
    lines += ["", "## Token accounting", "",
              f"Merged proxies: the {len(ev.candidates)} components'"
              f" training once plus {settings.merged_proxy_tokens:,} tokens per proxy (validate.merged_proxy_tokens, its"
              " evaluation's cost in training tokens); the interpolation null: the components plus that charge per component"
              " scored; trained proxies: their own tokens; the prior distance: nothing. The shared base is not counted.", ""]
    lines += [f"- {method}: {value:,} tokens" for method, value in tokens.items()]
    if result["quality"]:
        lines += ["", *quality_markdown(result["quality"], ev, ceiling)]
    undefined = [(r["method"], r["domain"], k, why) for r in records for k, why in r["undefined"].items()]
    if undefined:
        lines += ["", "## Undefined metrics", ""] + [f"- {m} / {d} / {LABELS[k]}: {why}" for m, d, k, why in undefined]
    if command:
        lines += ["", f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


def _is_acc(ev: Evaluations, task: str) -> bool:
    return any(r["task"] == task and r["accuracy"] for r in task_rows(ev.records[f"{REFERENCE}-{ev.ids[0]}"], ev.plan))


def quality_markdown(quality: list[dict], ev: Evaluations, ceiling: dict | None) -> list[str]:
    domains = ev.domains
    band = "; rank band: the ranks of the score +- 1.96 sqrt(2) x the replicates' noise sd" if ceiling else ""
    lines = [f"## Mixture quality (Table 3): rank among the {len(ev.ids)} references (1 best, {len(ev.ids) + 1} below all{band})", "",
             "| mixture | shares | " + " | ".join(f"{d} (rank, band)" for d in domains) + " | macro rank (band) |",
             "|---|---|" + "---|" * len(domains) + "---|"]
    for r in quality:
        cells = [f"{r['scores'][d]:.4f} ({r['ranks'][d]}" + (f", {r['bands'][d][0]}-{r['bands'][d][1]}" if d in r["bands"] else "")
                 + ")" for d in domains]
        macro_band = f" ({r['macro_band'][0]:.2f}-{r['macro_band'][1]:.2f})" if r["macro_band"] else ""
        lines.append(f"| {r['mixture']} | " + ", ".join(f"{n} {v:.3f}" for n, v in r["shares"].items()) + " | "
                     + " | ".join(cells) + f" | {r['macro_rank']:.2f}{macro_band} |")
    return lines


def mixture_quality_csv(quality: list[dict], domains: list[str]) -> str:
    names = list(quality[0]["shares"])
    return _csv(["mixture", *(f"share_{n}" for n in names), *domains, *(f"rank_{d}" for d in domains),
                 *(f"band_{d}_{e}" for d in domains for e in ("best", "worst")), "macro_rank", "macro_band_best", "macro_band_worst"],
                [[r["mixture"], *(r["shares"][n] for n in names), *(r["scores"][d] for d in domains),
                  *(r["ranks"][d] for d in domains), *(x for d in domains for x in r["bands"].get(d, ("", ""))),
                  r["macro_rank"], *(r["macro_band"] or ("", ""))] for r in quality])


def _save(fig, path: Path, title: str | None = None) -> None:
    """Lay out, write the PNG atomically, and free the figure."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    _pyplot().close(fig)


def plot_proxy_vs_reference(ev: Evaluations, records: list[dict], path: Path) -> None:
    """One panel per (method, domain): each mixture's proxy score against its reference score, rho in the title."""
    plt = _pyplot()
    methods, domains = [m for m in ev.scores if m != REFERENCE], ev.domains
    rho = {(r["method"], r["domain"]): r["rho"] for r in records}
    fig, axes = plt.subplots(len(methods), len(domains), figsize=(3.4 * len(domains), 2.8 * len(methods)), squeeze=False)
    for row, method in zip(axes, methods):
        for ax, domain in zip(row, domains):
            ax.scatter(ev.column(REFERENCE, domain), ev.column(method, domain), s=14)
            ax.set_title(f"{method} / {domain}: rho {_number(rho.get((method, domain)), 2)}", fontsize=8)
            ax.set_xlabel(f"reference {domain}", fontsize=7)
            ax.set_ylabel(method, fontsize=7)
            ax.tick_params(labelsize=6)
    _save(fig, path, "Proxy score against the trained reference score, per mixture")


def plot_rho_vs_compute(result: dict, path: Path) -> None:
    """Macro rho with its interval against each method's training tokens; methods charged nothing and the noise
    ceiling as horizontal lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for r in (r for r in result["records"] if r["domain"] == "macro" and r["rho"] is not None):
        ci = r["rho_ci"] or (r["rho"], r["rho"])
        if r["train_tokens"] > 0:
            ax.errorbar([r["train_tokens"]], [r["rho"]], yerr=[[r["rho"] - ci[0]], [ci[1] - r["rho"]]], fmt="o", capsize=3,
                        label=r["method"])
        else:
            ax.axhline(r["rho"], linestyle=":", color="grey", label=f"{r['method']} (no training)")
    if result["ceiling"] and result["ceiling"]["macro"]["rho"] is not None:
        m = result["ceiling"]["macro"]
        ax.axhline(m["rho"], linestyle="--", color="black", label=CEILING)
        if m["rho_ci"]:
            ax.axhspan(*m["rho_ci"], color="black", alpha=0.08)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())  # a narrow range would label every minor tick
    ax.set_xlabel("training tokens charged to the method")
    ax.set_ylabel("macro Spearman rho (95% paired bootstrap)")
    ax.set_title("Fidelity against compute")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_replicates(ev: Evaluations, path: Path) -> None:
    """Per domain: each replicated mixture's reference and replicate scores (with evaluation stderr bars) against
    the spread of every reference (shaded)."""
    plt = _pyplot()
    ids = sorted(ev.replicates)
    fig, axes = plt.subplots(1, len(ev.domains), figsize=(3.6 * len(ev.domains), 3.4), squeeze=False)
    for ax, domain in zip(axes[0], ev.domains):
        everything = ev.column(REFERENCE, domain)
        ax.axhspan(everything.min(), everything.max(), color="grey", alpha=0.15, label="all references")
        for x, i in enumerate(ids):
            for offset, (model, label) in enumerate([(f"{REFERENCE}-{i}", "reference"), (f"{REPLICATE}-{i}", "replicate")]):
                record = ev.records[model]
                ax.errorbar([x + 0.15 * offset], [record["domains"][domain]], yerr=[record.get("domain_stderrs", {}).get(domain, 0)],
                            fmt="os"[offset], color=("C0", "C1")[offset], capsize=2, label=label if x == 0 else None)
        ax.set_xticks(range(len(ids)), ids, fontsize=7)
        ax.set_title(domain, fontsize=9)
        ax.legend(fontsize=6)
    _save(fig, path, "Two trainings of the same mixture (data-order seeds) against the references' spread")


def write_report(root: Path, ev: Evaluations, settings, tokens: dict[str, int]) -> dict:
    """Measure (fidelity.py) and write every file of the module docstring; returns fidelity.json's content."""
    result = measure(ev, settings, tokens)
    atomic_write_text(root / "evaluations.csv", evaluations_csv(ev))
    atomic_write_text(root / "scores.csv", scores_csv(ev))
    atomic_write_text(root / "fidelity.csv", fidelity_csv(result))
    atomic_write_text(root / "fidelity.md", fidelity_markdown(result, ev, settings))
    if result["quality"]:
        atomic_write_text(root / "mixture_quality.csv", mixture_quality_csv(result["quality"], ev.domains))
        atomic_write_text(root / "mixture_quality.md", "\n".join(quality_markdown(result["quality"], ev, result["ceiling"])) + "\n")
    atomic_write_json(root / "fidelity.json", result)
    plot_proxy_vs_reference(ev, result["records"], root / "proxy_vs_reference.png")
    plot_rho_vs_compute(result, root / "rho_vs_compute.png")
    if ev.replicates:
        plot_replicates(ev, root / "replicates.png")
    return {**result, "mixture_quality": result["quality"], "report": str(root)}
