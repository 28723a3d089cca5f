"""Offline benchmarks: the quality harness (``dcrec bench quality``)."""
