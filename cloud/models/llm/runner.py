"""Running a causal LM for beam search: prefill prompts, then one token per beam.

Two runners with one interface (:class:`LMRunner`):

* :class:`HFRunner` works with any ``AutoModelForCausalLM``: the prompt's KV
  cache is copied into every beam (``reorder_cache``) and grows by
  concatenation, as ``generate`` does it.
* :class:`SharedPrefixRunner`, for Llama-style decoders (SmolLM2, Llama,
  Qwen2), keeps one copy of each user's prompt KV and a short per-beam cache
  for the generated tokens only. Each step attends over both parts with one
  softmax. With 20 beams over a 100-token prompt, copying the prompt cache
  costs more than the matmuls; here a step copies ``t <= title_tokens``
  positions per beam. It gives the same hidden states as :class:`HFRunner`
  (tested).

Shapes: B prompts, R live beams, L prompt length (left-padded), t generated
tokens, H query heads, Hkv key/value heads, G = H / Hkv, D head size, d model
width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import DynamicCache

# Decoders whose layers are exactly: RMSNorm, q/k/v/o projections with rotary
# positions and grouped-query attention, RMSNorm, MLP.
_LLAMA_STYLE = {"llama", "qwen2", "mistral"}


class LMRunner(Protocol):
    def start(self, prompts: Sequence[Sequence[int]], shared: int = 0) -> tuple[torch.Tensor, Any]:
        """Prefill B prompts: (hidden (B, d) at each prompt's last token, state); row b is prompt b.

        ``shared``: how many leading tokens every prompt has in common, call after call.
        """
        ...

    def advance(self, state: Any, src: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """New rows: row r continues old row ``src[r]`` with ``tokens[r]``. Returns hidden (R, d)."""
        ...

    def logits(self, hidden: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(R, V) logits, or (R, U) for the vocabulary subset ``tokens`` (U,)."""
        ...


class HFRunner:
    """Any Hugging Face causal LM whose ``base_model`` returns final (normed) hidden states."""

    def __init__(self, model: Any, pad_id: int) -> None:
        self.model = model.eval()
        self.base = model.base_model
        head = model.get_output_embeddings()
        self.weight: torch.Tensor = head.weight  # (V, d)
        self.bias: torch.Tensor | None = getattr(head, "bias", None)
        self.pad_id = int(pad_id)
        self._head: tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    @torch.inference_mode()
    def _head_cache(self, head: tuple[int, ...], rows: int) -> DynamicCache:
        """KV of the tokens every prompt starts with, computed once and kept, copied to ``rows``."""
        if self._head is None or self._head[0] != head:
            out = self.base(input_ids=torch.tensor([head]), use_cache=True)
            kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
            self._head = (head, kv)
        cache = DynamicCache()
        for i, (k, v) in enumerate(self._head[1]):
            cache.update(k.expand(rows, -1, -1, -1).contiguous(), v.expand(rows, -1, -1, -1).contiguous(), i)
        return cache

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]], shared: int = 0
                ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """(hidden (B, d), cache, attention mask (B, L), next position (B,)) for B prompts.

        The first ``shared`` tokens (the instructions, the same in every prompt)
        are run once per runner and their KV reused; the rest of each prompt is
        left-padded after them, the padding masked out.
        """
        n_head = max(0, min([shared] + [len(p) - 1 for p in prompts]))
        head = tuple(prompts[0][:n_head])
        if any(tuple(p[:n_head]) != head for p in prompts):
            raise ValueError(f"prompts differ within their first {n_head} (shared) tokens")
        rest = [p[n_head:] for p in prompts]
        width = max(len(p) for p in rest)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), n_head + width), dtype=torch.long)
        mask[:, :n_head] = 1
        for b, p in enumerate(rest):
            ids[b, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[b, n_head + width - len(p) :] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)[:, n_head:]
        cache = self._head_cache(head, len(prompts)) if n_head else None
        out = self.base(input_ids=ids, attention_mask=mask, position_ids=pos,
                        past_key_values=cache, use_cache=True)
        return out.last_hidden_state[:, -1], out.past_key_values, mask, pos[:, -1] + 1

    def start(self, prompts: Sequence[Sequence[int]], shared: int = 0) -> tuple[torch.Tensor, Any]:
        hidden, cache, mask, next_pos = self.prefill(prompts, shared)
        return hidden, {"cache": cache, "mask": mask, "next_pos": next_pos}

    @torch.inference_mode()
    def advance(self, state: Any, src: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        state["cache"].reorder_cache(src)
        mask = torch.cat([state["mask"][src], torch.ones((len(src), 1), dtype=torch.long)], dim=1)
        pos = state["next_pos"][src]
        state["mask"], state["next_pos"] = mask, pos + 1
        out = self.base(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos[:, None],
                        past_key_values=state["cache"], use_cache=True)
        return out.last_hidden_state[:, -1]

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        w = self.weight if tokens is None else self.weight[tokens]
        out = hidden @ w.T
        if self.bias is not None:
            out = out + (self.bias if tokens is None else self.bias[tokens])
        return out


@dataclass
class _Shared:
    """Prompt KV per layer (B, Hkv, L, D), pad bias (B, L), next position (B,);
    per-beam generated KV per layer (R, Hkv, t, D) and each row's prompt (R,)."""

    kp: list[torch.Tensor]
    vp: list[torch.Tensor]
    bias: torch.Tensor
    next_pos: torch.Tensor
    ks: list[torch.Tensor]
    vs: list[torch.Tensor]
    row_prompt: torch.Tensor


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class SharedPrefixRunner(HFRunner):
    """Llama-style decoders: prompt KV stored once per prompt, not once per beam."""

    @staticmethod
    def supports(model: Any) -> bool:
        base = getattr(model, "base_model", None)
        if getattr(model.config, "model_type", None) not in _LLAMA_STYLE or base is None:
            return False
        if getattr(model.config, "sliding_window", None) or not hasattr(base, "rotary_emb"):
            return False
        attn = base.layers[0].self_attn
        return all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj")) and not hasattr(attn, "q_norm")

    def __init__(self, model: Any, pad_id: int) -> None:
        super().__init__(model, pad_id)
        cfg = model.config
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads)
        self.scale = self.head_dim ** -0.5

    def start(self, prompts: Sequence[Sequence[int]], shared: int = 0) -> tuple[torch.Tensor, _Shared]:
        hidden, cache, mask, next_pos = self.prefill(prompts, shared)
        kp = [layer.keys for layer in cache.layers]
        vp = [layer.values for layer in cache.layers]
        bias = torch.zeros(mask.shape, dtype=hidden.dtype).masked_fill(mask == 0, -torch.inf)
        b = len(prompts)
        empty = [k.new_zeros((b, self.n_kv, 0, self.head_dim)) for k in kp]
        return hidden, _Shared(kp, vp, bias, next_pos, empty, list(empty), torch.arange(b))

    @torch.inference_mode()
    def advance(self, state: _Shared, src: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        rows = len(src)
        state.row_prompt = state.row_prompt[src]
        state.ks = [k[src] for k in state.ks]
        state.vs = [v[src] for v in state.vs]
        t = state.ks[0].shape[2]
        pos = state.next_pos[state.row_prompt] + t

        # Beams of one prompt share that prompt's keys: lay the queries out as
        # (prompts present, slot within prompt) so the prompt part is one batched matmul.
        prompts_here, local = torch.unique(state.row_prompt, return_inverse=True)
        order = torch.argsort(local, stable=True)
        counts = torch.bincount(local, minlength=len(prompts_here))
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(order)
        rank[order] = torch.arange(rows) - starts[local[order]]
        width = int(counts.max())
        slot = local * width + rank  # (R,) position in the padded (P, width) layout
        n_p = len(prompts_here)
        same = n_p == len(state.bias) and bool((prompts_here == torch.arange(n_p)).all())
        bias = state.bias if same else state.bias[prompts_here]
        h_kv, g, dh = self.n_kv, self.n_heads // self.n_kv, self.head_dim

        x = self.base.embed_tokens(tokens)  # (R, d)
        cos, sin = self.base.rotary_emb(x[:, None, :], pos[:, None])  # (R, 1, D)
        for i, layer in enumerate(self.base.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = _rotate(attn.q_proj(h).view(rows, self.n_heads, dh), cos, sin)
            k = _rotate(attn.k_proj(h).view(rows, h_kv, dh), cos, sin)
            v = attn.v_proj(h).view(rows, h_kv, dh)
            state.ks[i] = torch.cat([state.ks[i], k[:, :, None]], dim=2)
            state.vs[i] = torch.cat([state.vs[i], v[:, :, None]], dim=2)
            kp = state.kp[i] if same else state.kp[i][prompts_here]
            vp = state.vp[i] if same else state.vp[i][prompts_here]
            qg = q.view(rows, h_kv, g, dh)

            q_pad = qg.new_zeros((n_p * width, h_kv, g, dh))
            q_pad[slot] = qg
            q_pad = q_pad.view(n_p, width, h_kv, g, dh).permute(0, 2, 1, 3, 4).reshape(n_p, h_kv, width * g, dh)
            s_prompt = (q_pad @ kp.transpose(-1, -2)) * self.scale + bias[:, None, None, :]
            length = s_prompt.shape[-1]
            s_prompt = s_prompt.view(n_p, h_kv, width, g, length).permute(0, 2, 1, 3, 4)
            s_prompt = s_prompt.reshape(n_p * width, h_kv, g, length)[slot]  # (R, Hkv, G, L)
            s_gen = (qg @ state.ks[i].transpose(-1, -2)) * self.scale  # (R, Hkv, G, t+1)
            p = torch.softmax(torch.cat([s_prompt, s_gen], dim=-1), dim=-1)
            p_prompt, p_gen = p[..., :length], p[..., length:]

            p_pad = p.new_zeros((n_p * width, h_kv, g, length))
            p_pad[slot] = p_prompt
            p_pad = p_pad.view(n_p, width, h_kv, g, length).permute(0, 2, 1, 3, 4).reshape(n_p, h_kv, width * g, length)
            o_prompt = (p_pad @ vp).view(n_p, h_kv, width, g, dh).permute(0, 2, 1, 3, 4)
            o = o_prompt.reshape(n_p * width, h_kv, g, dh)[slot] + p_gen @ state.vs[i]
            x = x + attn.o_proj(o.reshape(rows, self.n_heads * dh))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.base.norm(x)


def make_runner(model: Any, pad_id: int) -> HFRunner:
    """The fastest runner that supports ``model``."""
    if SharedPrefixRunner.supports(model):
        return SharedPrefixRunner(model, pad_id)
    return HFRunner(model, pad_id)
