"""Training and export of device rerankers (needs the ``cloud`` extra: torch, onnx).

The device runtime never imports this package.
"""
