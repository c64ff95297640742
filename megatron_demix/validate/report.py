"""`demix validate`'s outputs, under <work_dir>/validate/:

- scores.csv: the raw per-mixture scores, one row per (method, mixture): shares and domain scores;
- fidelity.csv: one row per (method, domain or `macro`): mixtures, training tokens, every metric
  with its bootstrap interval (empty where undefined);
- fidelity.md: the paper's Table 2 shape (method, total training tokens, macro rho, top-25% rho,
  capability recovery), then per domain with intervals, Kendall tau and regret, and why a metric
  is undefined where it is;
- fidelity.json: the same numbers for programs;
- proxy_vs_reference.png: per domain, each method's proxy score against the reference score, rho in
  the title; rho_vs_compute.png: macro rho (with intervals) against each method's training tokens;
- mixture_quality.md / .csv (the paper's Table 3): models trained on the token prior and on the
  search's final mixture, their score and rank among the references per domain, and the macro rank.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from megatron_demix.runtime.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from megatron_demix.search.report import _pyplot
from megatron_demix.validate.metrics import METRICS, DomainFidelity, domain_fidelity, macro, paired_scores

LABELS = {"rho": "rho", "top25_rho": "top-25% rho", "recovery": "recovery", "kendall_tau": "Kendall tau", "regret": "regret"}


def domains_of(scores: dict[str, dict[str, dict]], reference: str) -> list[str]:
    return sorted({d for per_mixture in scores[reference].values() for d in per_mixture})


def fidelity_rows(scores: dict[str, dict[str, dict]], settings, reference: str) -> list[DomainFidelity]:
    """Every non-reference method against the reference, per domain (metrics.py raises on a missing score)."""
    rows = []
    for method, proxy in scores.items():
        if method == reference:
            continue
        for domain in domains_of(scores, reference):
            pairs = paired_scores(proxy, scores[reference], domain, method)
            rows.append(domain_fidelity(pairs, method, domain, samples=settings.bootstrap_samples, seed=settings.seed))
    return rows


def _csv(header: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _with_interval(value, interval) -> str:
    return _number(value) + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def scores_csv(mixtures: list[dict], scores: dict[str, dict[str, dict]], reference: str) -> str:
    names, domains = list(mixtures[0]["mixture"]), domains_of(scores, reference)
    rows = [[method, m["id"], *(m["mixture"][n] for n in names), *(per_mixture[m["id"]][d] for d in domains)]
            for method, per_mixture in scores.items() for m in mixtures]
    return _csv(["method", "mixture", *(f"share_{n}" for n in names), *domains], rows)


def fidelity_table(rows: list[DomainFidelity], tokens: dict[str, int]) -> list[dict]:
    """One record per (method, domain), then (method, `macro`)."""
    records = []
    for method in dict.fromkeys(r.method for r in rows):
        mine = [r for r in rows if r.method == method]
        for r in mine:
            records.append({"method": method, "domain": r.domain, "mixtures": r.mixtures, "train_tokens": tokens[method],
                            **{k: r.values[k] for k in METRICS}, **{f"{k}_ci": r.intervals[k] for k in METRICS}})
        records.append({"method": method, "domain": "macro", "mixtures": mine[0].mixtures, "train_tokens": tokens[method],
                        **macro(mine), **{f"{k}_ci": None for k in METRICS}})
    return records


def fidelity_csv(records: list[dict]) -> str:
    header = ["method", "domain", "mixtures", "train_tokens"]
    for k in METRICS:
        header += [k, f"{k}_low", f"{k}_high"]
    rows = []
    for r in records:
        row = [r["method"], r["domain"], r["mixtures"], r["train_tokens"]]
        for k in METRICS:
            ci = r[f"{k}_ci"]
            row += ["" if r[k] is None else r[k], *(("", "") if ci is None else ci)]
        rows.append(row)
    return _csv(header, rows)


def fidelity_markdown(records: list[dict], rows: list[DomainFidelity], tokens: dict[str, int], reference: str) -> str:
    macro_rows = [r for r in records if r["domain"] == "macro"]
    n = macro_rows[0]["mixtures"] if macro_rows else 0
    lines = [f"# Proxy fidelity against {n} reference models",
             "",
             f"Reference models trained for {tokens[reference]:,} tokens in all. Macro = mean over domains;"
             " metrics as the DeMix reference code defines them (validate/metrics.py).",
             "",
             "| method | total training tokens | rho | top-25% rho | capability recovery |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['train_tokens']:,} | {_number(r['rho'])} | {_number(r['top25_rho'])} |"
              f" {_number(r['recovery'])} |" for r in macro_rows]
    lines += ["", "## Per domain (95% bootstrap intervals over mixtures)", "",
              "| method | domain | n | " + " | ".join(LABELS[k] for k in METRICS) + " |",
              "|---|---|---|" + "---|" * len(METRICS)]
    lines += [f"| {r['method']} | {r['domain']} | {r['mixtures']} | "
              + " | ".join(_with_interval(r[k], r[f"{k}_ci"]) for k in METRICS) + " |" for r in records if r["domain"] != "macro"]
    undefined = [(r.method, r.domain, k, why) for r in rows for k, why in r.undefined.items()]
    if undefined:
        lines += ["", "## Undefined metrics", ""] + [f"- {m} / {d} / {LABELS[k]}: {why}" for m, d, k, why in undefined]
    return "\n".join(lines) + "\n"


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


def plot_proxy_vs_reference(scores: dict[str, dict[str, dict]], rows: list[DomainFidelity], reference: str, path: Path) -> None:
    plt = _pyplot()
    domains = domains_of(scores, reference)
    fig, axes = plt.subplots(1, len(domains), figsize=(4.2 * len(domains), 4.0), squeeze=False)
    rho = {(r.method, r.domain): r.values["rho"] for r in rows}
    for ax, domain in zip(axes[0], domains):
        ids = sorted(scores[reference])
        x = [scores[reference][i][domain] for i in ids]
        for method, per_mixture in scores.items():
            if method != reference:
                ax.scatter(x, [per_mixture[i][domain] for i in ids], s=18,
                           label=f"{method} (rho {_number(rho.get((method, domain)), 2)})")
        ax.set_xlabel(f"reference {domain}")
        ax.set_ylabel(f"proxy {domain}")
        ax.set_title(domain + ": " + ", ".join(f"{m} {_number(rho.get((m, domain)), 2)}"
                                               for m in scores if m != reference), fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("Proxy score against the trained reference score, per mixture")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_rho_vs_compute(records: list[dict], rows: list[DomainFidelity], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for r in (r for r in records if r["domain"] == "macro" and r["rho"] is not None):
        per_domain = [d.values["rho"] for d in rows if d.method == r["method"]]
        ax.errorbar([r["train_tokens"]], [r["rho"]], yerr=[[r["rho"] - min(per_domain)], [max(per_domain) - r["rho"]]],
                    fmt="o", capsize=3, label=r["method"])
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())  # a narrow range would label every minor tick
    ax.set_xlabel("training tokens spent by the method")
    ax.set_ylabel("macro Spearman rho (bars: domain range)")
    ax.set_title("Fidelity against compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_report(root: Path, mixtures: list[dict], scores: dict[str, dict[str, dict]], rows: list[DomainFidelity],
                 tokens: dict[str, int], reference: str) -> dict:
    records = fidelity_table(rows, tokens)
    atomic_write_text(root / "scores.csv", scores_csv(mixtures, scores, reference))
    atomic_write_text(root / "fidelity.csv", fidelity_csv(records))
    atomic_write_text(root / "fidelity.md", fidelity_markdown(records, rows, tokens, reference))
    summary = {"records": records, "train_tokens": tokens, "undefined": {f"{r.method}/{r.domain}": r.undefined for r in rows}}
    atomic_write_json(root / "fidelity.json", summary)
    plot_proxy_vs_reference(scores, rows, reference, root / "proxy_vs_reference.png")
    plot_rho_vs_compute(records, rows, root / "rho_vs_compute.png")
    return {**summary, "report": str(root)}


def rank_among(score: float, references: list[float]) -> int:
    """1 + how many references score higher (1: better than every reference)."""
    return 1 + sum(1 for r in references if r > score)


def write_mixture_quality(root: Path, mixtures: list[dict], scores: dict[str, dict], reference: dict[str, dict]) -> list[dict]:
    """Per mixture: shares, per-domain score and rank among the references, macro rank (mean of the domain ranks)."""
    domains = sorted({d for per in reference.values() for d in per})
    records = []
    for m in mixtures:
        ranks = {d: rank_among(scores[m["id"]][d], [per[d] for per in reference.values()]) for d in domains}
        records.append({"mixture": m["id"], "shares": m["mixture"], "scores": {d: scores[m["id"]][d] for d in domains},
                        "ranks": ranks, "macro_rank": sum(ranks.values()) / len(ranks)})
    names = list(mixtures[0]["mixture"])
    atomic_write_text(root / "mixture_quality.csv", _csv(
        ["mixture", *(f"share_{n}" for n in names), *domains, *(f"rank_{d}" for d in domains), "macro_rank"],
        [[r["mixture"], *(r["shares"][n] for n in names), *(r["scores"][d] for d in domains),
          *(r["ranks"][d] for d in domains), r["macro_rank"]] for r in records]))
    lines = [f"# Mixture quality: rank among {len(reference)} reference models (lower is better)", "",
             "| mixture | shares | " + " | ".join(f"{d} (rank)" for d in domains) + " | macro rank |",
             "|---|---|" + "---|" * len(domains) + "---|"]
    lines += [f"| {r['mixture']} | " + ", ".join(f"{n} {r['shares'][n]:.3f}" for n in names) + " | "
              + " | ".join(f"{r['scores'][d]:.4f} ({r['ranks'][d]})" for d in domains) + f" | {r['macro_rank']:.2f} |"
              for r in records]
    atomic_write_text(root / "mixture_quality.md", "\n".join(lines) + "\n")
    return records
