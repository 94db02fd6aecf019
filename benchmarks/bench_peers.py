"""lastrank against the tools a user would otherwise pick, on the same requests: sentence-transformers and
ONNX Runtime (float32, and dynamic int8 as `onnxruntime.quantization.quantize_dynamic` makes it by default),
all from the same model folder. One thread each, process CPU time, interleaved rounds, best of --repeat.

Cases (the table of issue #24):
  minilm      the real all-MiniLM-L6-v2 (ships offline: `minilm`), 1 query x 1,000 TREC-DL-2019 passages
              (the BM25 top-100 of the first 10 queries; the query is the first one's)
  minilm-uniform  the same model and query, 150 documents of 126 tokens each (TREC passages joined
              and cut at a token; 126-127 when encoded again): ONNX Runtime's padded batches waste ~nothing
  minilm-mixed    the same, 64 documents of 16 to 254 tokens (evenly spread; 256 with [CLS]/[SEP] is the limit)
  bge-100     bge-reranker-v2-m3's shape (random weights, `make-checkpoint --preset bge-reranker-v2-m3`),
              the first TREC-DL-2019 query and its 100 BM25 passages (pairs of about 60-120 tokens)
  bge-30      the same, first 30 passages
  bge-mixed   the same model, 12 documents of 20 to 500 tokens (TREC passages joined and cut at a token)
  bge-uniform the same model, 32 documents of 120 tokens each (joined and cut likewise): one ONNX Runtime
              batch with ~no padding, so every tool runs about the same products

Peers (--peers, comma-separated; default all):
  lastrank-float32, lastrank-bfloat16, lastrank-int8   Reranker(folder, dtype=...).rerank(query, docs)
  st-float32, st-bfloat16   sentence-transformers: SentenceTransformer.encode_query / encode_document +
                            similarity (batch 32), or CrossEncoder.predict (batch 32), the model cast to bf16
  ort-float32, ort-int8     ONNX Runtime (intra_op_num_threads=1): transformers' model of the folder exported
                            with torch.onnx.export (eager attention, dynamic batch and length), int8 by
                            quantize_dynamic(weight_type=QInt8) with its defaults (per-tensor weights); padded
                            batches of 32 sorted by length, the token ids lastrank's tokenizer gives, pooling /
                            head as the official code (mean pooling + normalise; the logit's sigmoid).
The exports are made once under --workdir. A peer whose library is missing stops the bench with one line
naming the package (or leave the peer out with --peers).

Every timed call is a whole request (tokenisation included); models are loaded before the clock starts and
each peer gets one small warm-up call first. Agreement: Kendall tau and the largest |score difference| of each
peer against lastrank-float32 on the same request (relevance scores: cosine, or sigmoid(logit)).

  python benchmarks/bench_peers.py --cases minilm --repeat 2
  python benchmarks/bench_peers.py --cases bge-30,bge-mixed --peers lastrank-bfloat16,lastrank-int8,ort-int8
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lastrank.eval.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
CASES = ("minilm", "minilm-uniform", "minilm-mixed", "bge-100", "bge-30", "bge-mixed", "bge-uniform")
PEERS = ("lastrank-float32", "lastrank-bfloat16", "lastrank-int8", "st-float32", "st-bfloat16", "ort-float32",
         "ort-int8")
NEEDS = {"st": ("sentence_transformers", "sentence-transformers"),
         "ort": ("onnxruntime", "onnxruntime onnx"), "ort-export": ("transformers", "transformers")}
BATCH = 32


class PeerMissing(Exception):
    pass


def need(module: str, pip: str, peer: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise PeerMissing(f"peer {peer} needs {module}, which is not installed (pip install {pip}), "
                          f"or leave it out with --peers")


# ------------------------------------------------------------------------------------------------ requests

def trec() -> tuple[dict, dict, dict]:
    """TREC-DL-2019 as bundled: queries, the passages its BM25 run needs, and each query's candidate ids in run
    order."""
    ds = load_dataset("trec-dl-2019")
    return ds.queries, ds.corpus, {qid: [c.doc_id for c in candidates] for qid, candidates in ds.run.items()}


def mixed_documents(tokenizer, corpus_texts: list[str], n: int = 12, lo: int = 20, hi: int = 500) -> list[str]:
    """n documents of lo..hi tokens (evenly spread), each TREC passages joined and cut at a token boundary."""
    text = " ".join(corpus_texts)
    tokenizer.no_truncation()  # a model folder's tokenizer.json may cut or pad to its max_seq_length
    tokenizer.no_padding()
    enc = tokenizer.encode(text, add_special_tokens=False)
    docs, at = [], 0
    for i in range(n):
        k = lo + (hi - lo) * i // (n - 1)
        start, end = enc.offsets[at][0], enc.offsets[at + k - 1][1]
        docs.append(text[start:end])
        at += k
    return docs


def case_request(case: str, bge_folder: Path) -> tuple[Path, str, list[str]]:
    queries, corpus, run = trec()
    qids = list(run)
    query = queries[qids[0]]
    if case == "minilm":
        from lastrank.model.resolve import resolve_checkpoint

        docs = [corpus[d] for q in qids[:10] for d in run[q][:100]]
        return resolve_checkpoint("minilm"), query, docs
    if case.startswith("minilm-"):
        from tokenizers import Tokenizer

        from lastrank.model.resolve import resolve_checkpoint

        folder = resolve_checkpoint("minilm")
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        texts = [corpus[d] for q in qids[:10] for d in run[q][:100]]
        n, lo, hi = (150, 126, 126) if case == "minilm-uniform" else (64, 16, 254)
        return folder, query, mixed_documents(tok, texts, n, lo, hi)
    passages = [corpus[d] for d in run[qids[0]]]
    if case == "bge-100":
        return bge_folder, query, passages[:100]
    if case == "bge-30":
        return bge_folder, query, passages[:30]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bge_folder / "tokenizer.json"))
    n, lo, hi = (32, 120, 120) if case == "bge-uniform" else (12, 20, 500)
    return bge_folder, query, mixed_documents(tok, [corpus[d] for q in qids[1:4] for d in run[q]], n, lo, hi)


def bge_checkpoint(workdir: Path) -> Path:
    folder = workdir / "bge-reranker-v2-m3"
    if not (folder / "model.safetensors").is_file():
        from lastrank.checkpoints.xlmr import make_xlmr_checkpoint

        print(f"making the random bge-reranker-v2-m3-shaped checkpoint in {folder} (once)", file=sys.stderr)
        make_xlmr_checkpoint(folder, "bge-reranker-v2-m3", seed=0, dtype="float32")
    return folder


# ------------------------------------------------------------------------------------------------ peers
# Each peer: load(folder) -> a function (query, docs) -> relevance scores (np.ndarray, input order).

def lastrank_peer(dtype: str):
    def load(folder: Path):
        import numpy as np

        from lastrank import Reranker

        r = Reranker(str(folder), dtype=dtype)

        def score(query, docs):
            out = np.empty(len(docs))
            for x in r.rerank(query, docs):
                out[x["index"]] = x["relevance_score"]
            return out
        return score
    return load


def st_peer(dtype: str):
    def load(folder: Path):
        import numpy as np
        import torch

        need(*NEEDS["st"], f"st-{dtype}")
        from sentence_transformers import CrossEncoder, SentenceTransformer

        if (folder / "modules.json").is_file():
            st = SentenceTransformer(str(folder), device="cpu").to(getattr(torch, dtype))

            def score(query, docs):
                q = st.encode_query([query], convert_to_tensor=True, batch_size=BATCH)
                d = st.encode_document(docs, convert_to_tensor=True, batch_size=BATCH)
                return st.similarity(q.float(), d.float())[0].numpy().astype(np.float64)
            return score
        ce = CrossEncoder(str(folder), device="cpu", max_length=512)
        ce.model.to(getattr(torch, dtype))

        def score(query, docs):
            return np.asarray(ce.predict([(query, d) for d in docs], batch_size=BATCH), dtype=np.float64)
        return score
    return load


def onnx_export(folder: Path, out: Path, int8: bool) -> Path:
    """transformers' model of `folder` -> out/model.onnx (float32), and out/model.int8.onnx (dynamic int8)."""
    fp32 = out / "model.onnx"
    if not fp32.is_file():
        need(*NEEDS["ort-export"], "ort-*")
        need("onnx", "onnx", "ort-*")
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification

        bi = (folder / "modules.json").is_file()
        cls = AutoModel if bi else AutoModelForSequenceClassification
        model = cls.from_pretrained(str(folder), attn_implementation="eager", dtype=torch.float32).eval()

        class Wrapped(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                o = self.m(input_ids=input_ids, attention_mask=attention_mask)
                return o.last_hidden_state if bi else o.logits

        out.mkdir(parents=True, exist_ok=True)
        ids = torch.randint(1000, 2000, (2, 16))
        mask = torch.ones(2, 16, dtype=torch.long)
        mask[1, 10:] = 0
        print(f"exporting {folder} to {fp32} (once)", file=sys.stderr)
        with torch.no_grad():
            torch.onnx.export(Wrapped(model).eval(), (ids, mask), str(fp32), input_names=["input_ids", "attention_mask"],
                              output_names=["out"], opset_version=17, dynamo=False,
                              dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
                                            "out": {0: "b"}})
    if not int8:
        return fp32
    q = out / "model.int8.onnx"
    if not q.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        print(f"quantizing {fp32} to {q} (once)", file=sys.stderr)
        quantize_dynamic(str(fp32), str(q), weight_type=QuantType.QInt8,
                         use_external_data_format=(fp32.stat().st_size > 1 << 30 or (out / "model.onnx.data").exists()))
    return q


def ort_peer(kind: str, workdir: Path):
    def load(folder: Path):
        import numpy as np

        need(*NEEDS["ort"], f"ort-{kind}")
        import onnxruntime as ort

        path = onnx_export(folder, workdir / "onnx" / folder.name, kind == "int8")
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        # the token ids lastrank's tokenizers make (sentence-transformers' / FlagReranker's rules), so every
        # peer reads the same input; the tokenizer is the `tokenizers` library, as transformers' fast one
        bi = (folder / "modules.json").is_file()

        def run(seqs: list[list[int]]) -> list:
            order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
            outs = [None] * len(seqs)
            for b in range(0, len(order), BATCH):
                idx = order[b:b + BATCH]
                n = max(len(seqs[i]) for i in idx)
                ids = np.zeros((len(idx), n), dtype=np.int64)
                mask = np.zeros((len(idx), n), dtype=np.int64)
                ids[:] = 0 if bi else 1  # pad ids: BERT 0, XLM-R 1
                for r, i in enumerate(idx):
                    ids[r, :len(seqs[i])] = seqs[i]
                    mask[r, :len(seqs[i])] = 1
                o = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
                for r, i in enumerate(idx):
                    if bi:  # mean pooling over real tokens, then L2 normalisation (the folder's modules)
                        v = o[r, :len(seqs[i])].mean(0)
                        outs[i] = v / max(np.linalg.norm(v), 1e-12)
                    else:
                        outs[i] = 1 / (1 + np.exp(-float(o[r, 0])))
            return outs

        if bi:
            from lastrank.families.bi_encoder import Pipeline, PromptTokenizer

            pipeline = Pipeline.read(folder)
            tok = PromptTokenizer(pipeline.transformer_dir / "tokenizer.json", pipeline.do_lower_case)
            limit = pipeline.max_seq_length

            def score(query, docs):
                q = run(tok.encode([query], "", limit, "q").ids)[0]
                d = np.stack(run(tok.encode(docs, "", limit, "d").ids))
                return (d @ q).astype(np.float64)
            return score

        from tokenizers import Tokenizer

        from lastrank.families.cross_encoder import CrossEncoderBackend, flag_reranker_lengths

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        prefix, middle, suffix = CrossEncoderBackend._template(tok)
        n_special = len(prefix) + len(middle) + len(suffix)

        def score(query, docs):  # FlagReranker's pairs: max_length 512, the query cut to 384 (cross_encoder.py)
            q = tok.encode(query, add_special_tokens=False).ids
            pairs = []
            for e in tok.encode_batch(docs, add_special_tokens=False):
                nq, nd = flag_reranker_lengths(len(q), len(e.ids), 512, 384, n_special)
                pairs.append(prefix + q[:nq] + middle + e.ids[:nd] + suffix)
            return np.asarray(run(pairs), dtype=np.float64)
        return score
    return load


def make_peer(name: str, workdir: Path):
    tool, dtype = name.split("-", 1)
    if tool == "lastrank":
        return lastrank_peer(dtype)
    if tool == "st":
        return st_peer(dtype)
    return ort_peer(dtype, workdir)


# ------------------------------------------------------------------------------------------------ main

def machine() -> dict:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "python": platform.python_version(),
            "isa": [f for f in ("avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if f in flags]}


def kendall(a, b) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    p.add_argument("--repeat", type=int, default=2, help="timed rounds (interleaved: every peer once per round)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lastrank-peers",
                   help="where the bge-shaped checkpoint and the ONNX exports are made once")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--docs", type=int, default=None, help="only the first N documents of each case (a smoke test)")
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    peers = [x for x in args.peers.split(",") if x]
    for c in cases:
        if c not in CASES:
            p.error(f"unknown case {c!r}; choose from {', '.join(CASES)}")
    for x in peers:
        if x not in PEERS:
            p.error(f"unknown peer {x!r}; choose from {', '.join(PEERS)}")
    try:  # every missing library named before anything is loaded or exported
        for x in peers:
            tool = x.split("-", 1)[0]
            if tool in NEEDS:
                need(*NEEDS[tool], x)
    except PeerMissing as e:
        print(f"bench_peers: error: {e}", file=sys.stderr)
        return 2

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    info = machine()
    print(f"# {info['cpu']} ({', '.join(info['isa']) or 'no AVX-512 bf16/VNNI, no AMX'}), {info['cpus']} CPUs, "
          f"torch {torch.__version__}, 1 thread, process CPU time, best of {args.repeat} interleaved rounds")
    results = []
    bge = bge_checkpoint(args.workdir) if any(c.startswith("bge") for c in cases) else None
    for case in cases:
        folder, query, docs = case_request(case, bge)
        docs = docs[:args.docs] if args.docs else docs
        loads = {x: make_peer(x, args.workdir) for x in peers}
        times: dict[str, list[tuple[float, float, float]]] = {x: [] for x in peers}
        scores: dict = {}
        for _ in range(args.repeat):
            for x in peers:  # one model in memory at a time (bge's shape is 2.2 GB in float32)
                try:
                    fn = loads[x](folder)
                except PeerMissing as e:
                    print(f"bench_peers: error: {e}", file=sys.stderr)
                    return 2
                fn(query, docs[:2])  # warm-up: kernel set-up, allocations
                load = os.getloadavg()[0]
                c0, w0 = time.process_time(), time.perf_counter()
                scores[x] = fn(query, docs)
                times[x].append((time.process_time() - c0, time.perf_counter() - w0, load))
                del fn
                gc.collect()
        ref = scores.get("lastrank-float32")
        for x in peers:
            cpu, wall, load = min(times[x])
            row = {"case": case, "peer": x, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "loadavg": round(load, 2),
                   "all_cpu_s": [round(t[0], 2) for t in times[x]], "documents": len(docs)}
            if ref is not None:
                row["tau_vs_lastrank_float32"] = round(kendall(scores[x], ref), 4)
                row["max_abs_diff_vs_lastrank_float32"] = float(f"{abs(scores[x] - ref).max():.2g}")
            results.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(f"| case | peer | CPU s (best) | wall s | load avg | tau vs lastrank fp32 | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['case']} ({r['documents']} docs) | {r['peer']} | {r['cpu_s']} | {r['wall_s']} | {r['loadavg']} | "
              f"{r.get('tau_vs_lastrank_float32', '-')} | {r.get('max_abs_diff_vs_lastrank_float32', '-')} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
