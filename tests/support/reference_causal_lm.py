"""Independent references for the causal-LM rerankers, shared by tests/families/test_causal_lm.py and
benchmarks/bench_causal_lm.py. Nothing here imports lastrank.

- `Qwen3RerankerCard`: Qwen3-Reranker's model card code, written out (format_instruction, process_inputs with
  truncation to max_length - prefix - suffix and left padding, compute_logits) on transformers' AutoTokenizer +
  AutoModelForCausalLM, or AutoModelForSequenceClassification for the converted form.
- `mxbai_package`: the `mxbai-rerank` package's MxbaiRerankV2 itself, given back the one tokenizer method
  transformers 5 removed (prepare_for_model, written from transformers 4's documented only_second truncation).
"""

from __future__ import annotations

import types

import numpy as np
import torch


# --- Qwen3-Reranker: the model card's code -------------------------------------------------------------------

CARD_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
               "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


class Qwen3RerankerCard:
    def __init__(self, folder, seq_cls: bool = False):
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
        cls = AutoModelForSequenceClassification if seq_cls else AutoModelForCausalLM
        self.model = cls.from_pretrained(str(folder), dtype=torch.float32).eval()
        self.seq_cls = seq_cls
        self.token_false_id = self.tokenizer.convert_tokens_to_ids("no")
        self.token_true_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.prefix_tokens = self.tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)

    @staticmethod
    def format_instruction(instruction, query, doc):
        if instruction is None:
            instruction = "Given a web search query, retrieve relevant passages that answer the query"
        return "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(
            instruction=instruction, query=query, doc=doc)

    def process_inputs(self, pairs, max_length):
        inputs = self.tokenizer(pairs, padding=False, truncation="longest_first", return_attention_mask=False,
                                max_length=max_length - len(self.prefix_tokens) - len(self.suffix_tokens))
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ele + self.suffix_tokens
        return self.tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)

    @torch.no_grad()
    def raw(self, query, docs, instruction=None, max_length=8192):
        pairs = [self.format_instruction(instruction, query, d) for d in docs]
        inputs = self.process_inputs(pairs, max_length)
        if self.seq_cls:
            return self.model(**inputs).logits[:, 0].float().numpy().astype(np.float64), inputs
        scores = self.model(**inputs).logits[:, -1, :]
        true_vector, false_vector = scores[:, self.token_true_id], scores[:, self.token_false_id]
        # the card's score: log_softmax over [no, yes], exp of the yes entry (checked against sigmoid below)
        card = torch.nn.functional.log_softmax(torch.stack([false_vector, true_vector], dim=1), dim=1)[:, 1].exp()
        raw = (true_vector - false_vector).float().numpy().astype(np.float64)
        if scores.dtype == torch.float32:  # (the benchmark runs this in bfloat16)
            np.testing.assert_allclose(card.numpy(), torch.sigmoid(true_vector - false_vector).numpy(), atol=1e-6)
        return raw, inputs


# --- mxbai-rerank-v2: the package ----------------------------------------------------------------------------

def _prepare_for_model(self, ids, pair_ids, *, truncation, max_length, **_):
    """transformers 4's prepare_for_model(..., add_special_tokens=False, padding=False) with
    truncation="only_second": the second sequence loses tokens from its end until the pair fits, unless it is
    too short to make it fit (then nothing is cut and an error is logged)."""
    assert truncation == "only_second"
    over = len(ids) + len(pair_ids) - max_length
    if over > 0 and len(pair_ids) > over:
        pair_ids = pair_ids[:-over]
    return {"input_ids": list(ids) + list(pair_ids)}


def mxbai_package(folder, max_length):
    from mxbai_rerank import MxbaiRerankV2

    ranker = MxbaiRerankV2(str(folder), device="cpu", torch_dtype=torch.float32, max_length=max_length)
    ranker.tokenizer.prepare_for_model = types.MethodType(_prepare_for_model, ranker.tokenizer)
    return ranker
