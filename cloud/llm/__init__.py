"""Generative cloud backend: a causal LLM writes catalogue titles under a prefix-tree constraint.

Modules: :mod:`~dcrec.cloud.llm.prompt` (history -> prompt), :mod:`~dcrec.cloud.llm.trie`
(prefix tree over titles), :mod:`~dcrec.cloud.llm.decode` (constrained beam search),
:mod:`~dcrec.cloud.llm.backend` (train / load_generator for :mod:`dcrec.cloud.backends`),
:mod:`~dcrec.cloud.llm.finetune_lora` (optional LoRA fine-tuning on a GPU),
:mod:`~dcrec.cloud.llm.evaluate` (offline quality and latency figures).
Heavy imports (torch, transformers) happen in those modules, not here.
"""
