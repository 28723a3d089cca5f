"""Generative cloud backend: a causal LLM writes catalogue titles under a prefix-tree constraint.

Modules: :mod:`~dcrec.cloud.models.llm.prompt` (history -> prompt), :mod:`~dcrec.cloud.models.llm.trie`
(prefix tree over titles), :mod:`~dcrec.cloud.models.llm.decode` (constrained beam search),
:mod:`~dcrec.cloud.models.llm.backend` (train / load_generator for :mod:`dcrec.cloud.models.backends`),
:mod:`~dcrec.cloud.models.llm.finetune_lora` (optional LoRA fine-tuning on a GPU),
:mod:`~dcrec.cloud.models.llm.evaluate` (offline quality and latency figures).
Heavy imports (torch, transformers) happen in those modules, not here.
"""
