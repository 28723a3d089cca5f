"""Generative cloud backend: a causal LLM writes catalogue titles under a prefix-tree constraint.

Modules: :mod:`~cloud.llm.prompt` (history -> prompt), :mod:`~cloud.llm.trie`
(prefix tree over titles), :mod:`~cloud.llm.decode` (constrained beam search),
:mod:`~cloud.llm.backend` (train / load_generator for :mod:`cloud.backends`),
:mod:`~cloud.llm.finetune_lora` (optional LoRA fine-tuning on a GPU),
:mod:`~cloud.llm.evaluate` (offline quality and latency figures).
Heavy imports (torch, transformers) happen in those modules, not here.
"""
