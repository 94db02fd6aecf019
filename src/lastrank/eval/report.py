"""Report files: report.json (everything), report.md (tables) and plot.png (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path

from lastrank.eval.measures import METRICS, measure_names
from lastrank.eval.permutation import PermutationStudy
from lastrank.eval.run import OrderEval, timing_summary

FIRST_STAGE = "first stage"
RANDOM_WEIGHTS_WARNING = ("RANDOM WEIGHTS: the model is a `lastrank make-checkpoint` folder, so the reranked numbers "
                          "mean nothing (the first stage's are real)")


def random_weights_warning(report: dict) -> str | None:
    """The warning every output of a run with a random-weight checkpoint carries (None otherwise)."""
    return RANDOM_WEIGHTS_WARNING if report.get("model", {}).get("random_weights") else None


def model_description(model: dict) -> str | None:
    """The family and its score rule in words, from the Capabilities fields the report's "model" holds
    (None when it holds none: a server that does not say, or a fake in tests). Only the order of the scores
    enters the measures; the rule says what the scores in "rankings" are."""
    family = model.get("family")
    if not family:
        return None
    rule = {"sigmoid": "relevance_score = sigmoid(raw_score) in [0, 1]",
            "cosine": "relevance_score = cosine in [-1, 1]"}.get(model.get("score"), f"score {model.get('score')}")
    raw = f", raw_score = {model['raw_score']}" if model.get("raw_score") else ""
    return f"family {family}; {rule}{raw}"


def _clean(per_query: dict) -> dict:
    return {q: {k: round(v, 6) for k, v in m.items()} for q, m in per_query.items()}


def build_report(config: dict, model: dict, orders: OrderEval | None, perm: PermutationStudy | None) -> dict:
    report: dict = {"config": config, "model": model}
    if model.get("random_weights"):
        report["warning"] = RANDOM_WEIGHTS_WARNING
    if orders is not None:
        systems = {FIRST_STAGE: orders.first_stage, **{f"reranked ({o})": r for o, r in orders.orders.items()}}
        report["measures"] = measure_names(orders.rel_min)
        report["rel_min"] = orders.rel_min
        report["queries"] = orders.query_ids
        report["aggregate"] = {name: agg for name, (_, agg) in systems.items()}
        report["per_query"] = {
            qid: {name: per_q.get(qid, {}) for name, (per_q, _) in systems.items()} for qid in orders.query_ids
        }
        report["timings"] = {
            "wall_seconds": orders.wall_seconds,
            "reranked_now": orders.ran,
            "from_cache": sum(len(r) for r in orders.records.values()) - orders.ran,
            "per_order": {o: timing_summary(recs) for o, recs in orders.records.items()},
        }
        report["rankings"] = {
            o: {rec["qid"]: {"input": rec["input"], "ranking": rec["ranking"]} for rec in recs}
            for o, recs in orders.records.items()
        }
    if perm is not None:
        report["permutations"] = {
            "qid": perm.qid,
            "query": perm.query,
            "n_permutations": perm.n_permutations,
            "n_docs": perm.n_docs,
            "ndcg10": perm.ndcg10,
            "ranks": perm.ranks,
            "docs": perm.docs,
            "timings": {
                "wall_seconds": perm.wall_seconds,
                "reranked_now": perm.ran,
                "from_cache": len(perm.records) - perm.ran,
                **timing_summary(perm.records),
            },
        }
    return report


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4f}"


def aggregate_table(report: dict) -> str:
    """The headline table: first stage, then one reranked row per order, with deltas."""
    agg = report["aggregate"]
    names = report["measures"]
    head = "| system | " + " | ".join(METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 1)]
    base = agg.get(FIRST_STAGE, {})
    for system, values in agg.items():
        cells = []
        for m in METRICS:
            v = values.get(m)
            cell = _fmt(v)
            if system != FIRST_STAGE and v is not None and base.get(m) is not None:
                cell += f" ({v - base[m]:+.4f})"
            cells.append(cell)
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"{len(report['queries'])} judged queries; ir_measures: "
        + ", ".join(names[m] for m in METRICS)
        + f"; nDCG@10 uses the graded qrels as given, RR@10 and R@100 count grade >= {report['rel_min']} as relevant."
    )
    return "\n".join(lines)


def permutation_summary(report: dict) -> str:
    p = report["permutations"]
    ranks = p["ranks"]
    top = ranks[:10]
    lines = [f"permutation study: query {p['qid']}, {p['n_docs']} candidates, {p['n_permutations']} random input orders"]
    if p["ndcg10"]:
        n = p["ndcg10"]
        lines.append(f"  nDCG@10 over permutations: mean {n['mean']:.4f}  std {n['std']:.4f}  min {n['min']:.4f}  max {n['max']:.4f}")
    lines.append("  share of permutations putting the modal document at rank 1..10: "
                 + " ".join(f"{r['modal_fraction']:.2f}" for r in top))
    stds = [d["rank_std"] for d in p["docs"]]
    lines.append(f"  rank std per document, by mean rank: first 10 mean {sum(stds[:10]) / len(stds[:10]):.2f}, "
                 f"all mean {sum(stds) / len(stds):.2f}")
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    c = report["config"]
    out = [f"# lastrank eval: {c['dataset']}", ""]
    if random_weights_warning(report):
        out += [f"> **{random_weights_warning(report)}.**", ""]
    out.append(
        f"- model: `{c['model']}`"
        + (f" via server {c['server']}" if c.get("server") else f" ({c.get('device')}, {c.get('dtype')})")
    )
    if described := model_description(report.get("model", {})):
        out.append(f"- {described}")
    out.append(f"- data: `{c['data']}` ({c['layout']} layout), run `{c['run']}`, top-k {c['top_k']}")
    out.append(f"- passage text: {c['text_convention']}")
    if c.get("chunking"):
        out.append(f"- long documents: {c['chunking']}, max_doc_length {c.get('max_doc_length') or 'the family default'}"
                   + (f", chunk overlap {c['chunk_overlap']}" if c.get("chunk_overlap") is not None else ""))
    if "aggregate" in report:
        if c["orders"]:
            out.append(f"- orders: {', '.join(c['orders'])} (seed {c['seed']} for random)")
        out += ["", "## Aggregate", "", aggregate_table(report), ""]
    if report.get("timings", {}).get("per_order"):
        t = report["timings"]
        out.append("## Timings")
        out.append("")
        out.append("| order | queries | mean s/query | docs/s |")
        out.append("|---|---|---|---|")
        for o, s in t["per_order"].items():
            if s.get("queries"):
                dps = s["docs_per_second"]
                out.append(f"| {o} | {s['queries']} | {s['mean_seconds']:.3f} | {dps:.1f} |" if dps else f"| {o} | {s['queries']} | {s['mean_seconds']:.3f} | – |")
        out.append("")
        out.append(f"{t['reranked_now']} rerank calls this run, {t['from_cache']} from the cache; wall {t['wall_seconds']:.1f} s.")
        out += ["", "## Per query nDCG@10", ""]
        systems = list(report["aggregate"])
        out.append("| query | " + " | ".join(systems) + " |")
        out.append("|" + "---|" * (len(systems) + 1))
        for qid, per in report["per_query"].items():
            out.append(f"| {qid} | " + " | ".join(_fmt(per[s].get("nDCG@10")) for s in systems) + " |")
        out.append("")
    if "permutations" in report:
        p = report["permutations"]
        out += [
            f"## Permutation stability: query {p['qid']}",
            "",
            f"{p['query']!r}: {p['n_docs']} candidates under {p['n_permutations']} random input orders.",
            "",
        ]
        if p["ndcg10"]:
            n = p["ndcg10"]
            out.append(f"nDCG@10 over permutations: mean {n['mean']:.4f}, std {n['std']:.4f}, min {n['min']:.4f}, max {n['max']:.4f}.")
            out.append("")
        out.append("| final rank | modal document | share of permutations | distinct documents |")
        out.append("|---|---|---|---|")
        for r in p["ranks"]:
            out.append(f"| {r['rank']} | {r['modal_doc']} | {r['modal_fraction']:.3f} | {r['distinct_docs']} |")
        out += ["", "| document | first-stage rank | relevance | mean rank | rank std | min | max |", "|---|---|---|---|---|---|---|"]
        for d in p["docs"]:
            rel = "–" if d["relevance"] is None else d["relevance"]
            out.append(
                f"| {d['doc_id']} | {d['first_stage_rank']} | {rel} | {d['mean_rank']:.2f} | {d['rank_std']:.2f} | {d['min_rank']} | {d['max_rank']} |"
            )
        out.append("")
    return "\n".join(out)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless; no display needed
    import matplotlib.pyplot as plt

    panels = []
    if len(report.get("aggregate", {})) > 1:  # the permutation study alone has only the first stage
        panels += ["aggregate", "per_query"]
    if "permutations" in report:
        panels += ["perm_docs", "perm_ranks"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "aggregate":
            systems = list(report["aggregate"])
            width = 0.8 / len(systems)
            for i, s in enumerate(systems):
                vals = [report["aggregate"][s].get(m, 0.0) for m in METRICS]
                ax.bar([j + i * width for j in range(len(METRICS))], vals, width, label=s, color=f"C{i}")
            ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(METRICS))], METRICS)
            ax.set_ylim(0, 1)
            ax.set_title(f"{report['config']['dataset']}: mean over {len(report['queries'])} queries")
            ax.legend(fontsize=8)
        elif panel == "per_query":
            qids = report["queries"]
            base = [report["per_query"][q][FIRST_STAGE].get("nDCG@10", 0.0) for q in qids]
            for i, s in enumerate(list(report["aggregate"])[1:], 1):  # same colours as the bars
                ax.scatter(base, [report["per_query"][q][s].get("nDCG@10", 0.0) for q in qids], s=14, label=s, color=f"C{i}")
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
            ax.set_xlabel("first stage nDCG@10")
            ax.set_ylabel("reranked nDCG@10")
            ax.set_title("per query")
            ax.legend(fontsize=8)
        elif panel == "perm_docs":
            p = report["permutations"]
            docs = p["docs"]
            colors = ["tab:green" if (d["relevance"] or 0) > 0 else "tab:grey" for d in docs]
            x = range(1, len(docs) + 1)
            ax.errorbar(x, [d["mean_rank"] for d in docs], yerr=[d["rank_std"] for d in docs], fmt="none", ecolor="lightgrey")
            ax.scatter(x, [d["mean_rank"] for d in docs], c=colors, s=10)
            ax.set_xlabel("document, by mean final rank (green = judged relevant)")
            ax.set_ylabel("final rank (mean ± std)")
            ax.invert_yaxis()
            ax.set_title(f"query {p['qid']}: {p['n_permutations']} permutations of {p['n_docs']} docs")
        elif panel == "perm_ranks":
            ranks = report["permutations"]["ranks"]
            ax.bar([r["rank"] for r in ranks], [r["modal_fraction"] for r in ranks], color="tab:blue")
            ax.set_xlabel("final rank")
            ax.set_ylabel("share of permutations with the modal document")
            ax.set_ylim(0, 1)
            ax.set_title("per-rank stability")
    described = model_description(report.get("model", {}))
    if random_weights_warning(report):
        fig.suptitle("RANDOM WEIGHTS (make-checkpoint): reranked scores are meaningless"
                     + (f"\n{described}" if described else ""), color="tab:red", fontweight="bold")
    elif described:
        fig.suptitle(described)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "plot": out_dir / "plot.png"}
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
    plot(report, paths["plot"])
    # written last: its presence marks the run finished (an unfinished out dir is resumed, see cli/commands/eval.py)
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
    tmp.replace(paths["json"])
    return paths
