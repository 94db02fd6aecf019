"""QwenConfig: the fields of the checkpoint's config.json that the decoder math needs, in config.json's spelling.

One config for the Qwen3 and Qwen2 decoders (model/decoder.py); `model_type` switches what differs:
  - "qwen3": q_norm/k_norm (RMSNorm over each head's q and k before RoPE), no projection biases
    (Qwen3 with attention_bias=true would also bias o_proj; no released checkpoint does, and it is refused);
  - "qwen2": q/k/v biases (always: transformers' Qwen2Attention hard-codes bias=True; o_proj has none),
    no q/k norms. config.json carries no attention_bias for Qwen2; `from_dict` sets it.
What a family needs beyond that (e.g. Jina V3 must be a Qwen3 without biases) is the family's check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

@dataclass
class QwenConfig:
    model_type: str = "qwen3"
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    vocab_size: int = 151936
    max_position_embeddings: int = 131072
    hidden_act: str = "silu"
    attention_bias: bool = False  # q/k/v projection biases (Qwen2)
    tie_word_embeddings: bool = True
    torch_dtype: str = "bfloat16"

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.model_type not in ("qwen3", "qwen2"):
            raise ValueError(f"unsupported model_type {self.model_type!r} (the decoder implements qwen3 and qwen2)")
        if self.hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r} (Qwen2/Qwen3 use silu)")
        if self.model_type == "qwen3" and self.attention_bias:
            raise ValueError("a qwen3 config with attention_bias=true (which also biases o_proj) is not supported")

    @property
    def qk_norm(self) -> bool:
        """Qwen3 normalises each head's q and k before RoPE; Qwen2 does not."""
        return self.model_type == "qwen3"

    @classmethod
    def from_dict(cls, d: dict) -> "QwenConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known and v is not None}
        if d.get("model_type") == "qwen2":
            kw["attention_bias"] = True  # Qwen2's q/k/v always have biases (not a config.json field)
        if "head_dim" not in d and "hidden_size" in d and "num_attention_heads" in d:
            kw["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        if d.get("rope_scaling"):
            raise ValueError("rope_scaling is set in config.json; the decoder implements plain RoPE only")
        rope = d.get("rope_parameters")  # how transformers 5 writes config.json: rope_theta moves in here
        if isinstance(rope, dict):
            if rope.get("rope_type", "default") != "default":
                raise ValueError(f"rope_type {rope.get('rope_type')!r} in config.json; the decoder implements plain RoPE only")
            if "rope_theta" not in d and "rope_theta" in rope:
                kw["rope_theta"] = rope["rope_theta"]
        if d.get("use_sliding_window"):
            raise ValueError("use_sliding_window is set in config.json; the decoder implements full attention only")
        return cls(**kw)

    @classmethod
    def from_file(cls, path: str | Path) -> "QwenConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
