"""Cross-encoders (bge-reranker-v2-m3, jina-reranker-v2): lastrank's packed forward against the official path.

One query of TREC-DL 2019 and its 100 BM25 passages (the bundled data), on a random-weight checkpoint of the
real shape (`make-checkpoint --preset bge-reranker-v2-m3 | jina-reranker-v2`; the speed does not depend on
the weights). Timed end to end, tokenisation included, best of --repeats after one warm-up:

  lastrank   Reranker(folder).rerank(query, passages): the pairs of the request in one packed forward
             (no padding; attention per pair).
  reference  what the official code runs, on transformers' XLMRobertaForSequenceClassification (SDPA):
             bge: FlagReranker.compute_score (tokenise, sort by length, padded batches of 128);
             jina: compute_score (padded batches of 32 in input order, longest_first truncation).
             The tokenisation and model are tests/support/reference_xlmr.py's.

Prints tokens, padded tokens, both times, the speed-up and the largest |logit difference| (meaningful in
float32). Usage: python benchmarks/bench_cross_encoder.py --preset jina-reranker-v2 [--dtype float32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lastrank.eval.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the references: tests/support


def trec_query(dataset: str = "trec-dl-2019", k: int = 100) -> tuple[str, list[str]]:
    """The first query of a bundled data set and the passages of its first `k` BM25 candidates, in run order."""
    ds = load_dataset(dataset)
    qid = next(iter(ds.run))
    return ds.queries[qid], [ds.corpus[c.doc_id] for c in ds.run[qid][:k]]


def best_of(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="jina-reranker-v2")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--checkpoint", type=Path, help="an existing folder (default: a fresh random one)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu",
                   help="where lastrank's path runs (cpu, cuda[:N]); the reference path stays on the CPU")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from support.reference_xlmr import (compute_score_inputs, flag_reranker_inputs, official_tokenizer, padded_logits,
                                        transformers_model)

    from lastrank import Reranker
    from lastrank.checkpoints.xlmr import make_xlmr_checkpoint

    dtype = getattr(torch, args.dtype)
    folder = args.checkpoint or make_xlmr_checkpoint(Path(tempfile.mkdtemp()) / args.preset, args.preset,
                                                     dtype=args.dtype)
    query, passages = trec_query()
    ours = Reranker(folder, device=args.device, dtype=args.dtype)
    flag = ours.backend.rule == "flag-reranker"
    tok = official_tokenizer(Path(folder))
    ref = transformers_model(Path(folder)).to(dtype)

    def reference() -> np.ndarray:
        if flag:
            inputs = flag_reranker_inputs(tok, query, passages)
            order = np.argsort([-len(x) for x in inputs])
            logits = np.empty(len(inputs))
            for start in range(0, len(inputs), 128):
                idx = order[start:start + 128]
                logits[idx] = padded_logits(ref, [inputs[i] for i in idx]).float().numpy()
            return logits
        out = []
        for start in range(0, len(passages), 32):
            out.append(padded_logits(ref, compute_score_inputs(tok, query, passages[start:start + 32])).float().numpy())
        return np.concatenate(out)

    def lastrank() -> np.ndarray:
        res = ours.backend.rerank(__import__("lastrank").RerankRequest(query=query, documents=passages))
        return np.array([r.raw_score for r in sorted(res.results, key=lambda r: r.index)])

    with torch.inference_mode():
        t_ours, ours_logits = best_of(lastrank, args.repeats)
        t_ref, ref_logits = best_of(reference, args.repeats)
    seqs = [s for b in ours.backend.plan(__import__("lastrank").RerankRequest(query=query, documents=passages)).blocks
            for s in b.sequences]
    if flag:
        lengths = sorted((len(s) for s in seqs), reverse=True)
        padded = sum(max(lengths[i:i + 128]) * len(lengths[i:i + 128]) for i in range(0, len(lengths), 128))
    else:
        padded = sum(max(map(len, seqs[i:i + 32])) * len(seqs[i:i + 32]) for i in range(0, len(seqs), 32))
    print(f"{args.preset} ({ours.capabilities.architecture}), {args.dtype}, torch threads {torch.get_num_threads()}, "
          f"lastrank on {ours.device}, the reference on cpu")
    print(f"  100 TREC-DL-2019 passages: {sum(map(len, seqs))} tokens (padded reference: {padded})")
    print(f"  lastrank  {t_ours * 1000:9.1f} ms")
    print(f"  reference {t_ref * 1000:9.1f} ms   speed-up {t_ref / t_ours:.2f}x")
    print(f"  max |logit difference| {np.abs(ours_logits - ref_logits).max():.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
