"""jina-reranker-m0: lastrank against the official compute_score, on one query and image documents.

One TREC-DL 2019 query (text) and --images image documents (and optionally --text-docs of its BM25 passages:
a mixed request), on a random-weight checkpoint of the real shape (`make_m0_checkpoint(..., "2b")`: Qwen2-VL-2B's
vision encoder, 32 blocks of 1280, and its 28-layer Qwen2 decoder; the speed does not depend on the weights,
nor on what the pixels show, only on the image sizes). Timed end to end, image preprocessing and tokenisation
included, best of --repeats after a warm-up on one small image:

  reference  the official compute_score on transformers (tests/support/reference_m0.py: Qwen2VLForConditionalGeneration,
             SDPA attention, LM head Identity, left-padded batches of 8 pairs of one (query type, document type);
             a mixed request is one call per document type, as the official API takes them).
  lastrank   Reranker(folder).rerank_request: the pairs packed without padding into forwards of up to
             max_forward_tokens tokens, every image of a forward in one vision-encoder call.

Prints the tokens each path runs (the reference's padded), wall and process CPU times (compare CPU on a
shared machine), the speed-up and the largest |relevance difference| (bfloat16 numbers; exactness is the
float32 parity suite's, tests/families/test_jina_m0.py). Usage:
  python benchmarks/bench_m0.py [--preset jina-reranker-m0 | jina-reranker-m0-tiny] [--images 20]
      [--sizes 448x448[,WxH...]] [--text-docs 0] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def sizes(text: str) -> list[tuple[int, int]]:
    """"448x448,1280x720" -> [(448, 448), (1280, 720)]."""
    return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]


def images(n: int, sizes: list[tuple[int, int]], seed: int = 0):
    """n RGB images, their (width, height) cycling through `sizes`: noise (the time does not depend on what an
    image shows)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for w, h in (sizes[i % len(sizes)] for i in range(n))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="jina-reranker-m0", help="jina-reranker-m0 (real shape) or jina-reranker-m0-tiny")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: process CPU time is the measure)")
    p.add_argument("--images", type=int, default=20, help="image documents")
    p.add_argument("--sizes", type=sizes, default=[(448, 448)],
                   help="their width x height, cycled (default 448x448; e.g. 448x448,1280x720,595x842,320x240)")
    p.add_argument("--text-docs", type=int, default=0, help="text documents (BM25 passages) after the images")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--checkpoint", type=Path, help="an existing folder (default: a fresh random one)")
    p.add_argument("--json", type=Path)
    p.add_argument("--device", default="cpu",
                   help="where lastrank's path runs (cpu, cuda[:N]); the reference path stays on the CPU")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from bench_causal_lm import best_of, report
    from bench_cross_encoder import trec_query
    from support.reference_m0 import official_compute_score

    from lastrank import Reranker
    from lastrank.checkpoints import preset
    from lastrank.model.qwen2_vl import image_grid
    from lastrank.types import RerankRequest

    dtype = getattr(torch, args.dtype)
    folder = args.checkpoint or preset(args.preset)[1].write(Path(tempfile.mkdtemp()) / args.preset, dtype=args.dtype)
    query, passages = trec_query(k=max(args.text_docs, 1))
    pictures = images(args.images, args.sizes)
    texts = passages[:args.text_docs]
    n = len(pictures) + len(texts)
    request = RerankRequest(query=query, documents=[""] * len(pictures) + texts,
                            images=dict(enumerate(pictures)) or None)
    warm_request = RerankRequest(query=query, documents=[""], images={0: images(1, [(56, 56)], seed=1)[0]})

    ours = Reranker(str(folder), device=args.device, dtype=args.dtype)
    official = official_compute_score(folder, dtype=dtype, attn_implementation="sdpa")

    def lastrank(r: RerankRequest) -> np.ndarray:
        scores = np.empty(len(r.documents))
        for res in ours.rerank_request(r).results:
            scores[res.index] = res.relevance_score
        return scores

    def reference(r: RerankRequest) -> np.ndarray:
        imgs = r.images or {}
        scores = np.empty(len(r.documents))
        image_idx = [i for i in range(len(r.documents)) if i in imgs]
        text_idx = [i for i in range(len(r.documents)) if i not in imgs]
        if image_idx:
            scores[image_idx] = official([(r.query, imgs[i]) for i in image_idx], doc_type="image")
        if text_idx:
            scores[text_idx] = official([(r.query, r.documents[i]) for i in text_idx])
        return scores

    plan = ours.backend.plan(request)
    lengths = [len(s) for b in plan.blocks for s in b.sequences]
    by_type = [lengths[:len(pictures)], lengths[len(pictures):]]
    padded = sum(max(part[i:i + 8]) * len(part[i:i + 8]) for part in by_type for i in range(0, len(part), 8))
    rows = {}
    with torch.inference_mode():
        for name, fn in (("reference", reference), ("lastrank", lastrank)):
            fn(warm_request)
            seconds, cpu, out = best_of(lambda: fn(request), args.repeats)
            rows[name] = {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "scores": out}
            print(f"{name}: {seconds:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    diff = float(np.abs(rows["lastrank"].pop("scores") - rows["reference"].pop("scores")).max())
    rows["reference"]["tokens"] = padded
    rows["lastrank"]["tokens"] = plan.usage.prompt_tokens
    cap = ours.capabilities
    result = {
        "preset": args.preset, "architecture": cap.architecture, "dtype": args.dtype, "threads": args.threads,
        "device": {"lastrank": str(ours.device), "reference": "cpu"},
        "documents": {"images": len(pictures), "image_sizes": [f"{w}x{h}" for w, h in args.sizes], "texts": len(texts)},
        "image_tokens_each": [int(np.prod(image_grid(w, h))) // 4 for w, h in args.sizes],
        "paths": rows, "max_abs_relevance_diff": diff,
        "speedup_vs_reference_cpu": round(rows["reference"]["cpu_seconds"] / rows["lastrank"]["cpu_seconds"], 2),
        "speedup_vs_reference_wall": round(rows["reference"]["seconds"] / rows["lastrank"]["seconds"], 2),
        "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    print(f"{args.preset}: one query, {len(pictures)} image documents {','.join(result['documents']['image_sizes'])}"
          f" + {len(texts)} text documents ({n} in all), {args.dtype}, {args.threads} thread(s)")
    report(rows, result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
