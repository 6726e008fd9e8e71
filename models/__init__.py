"""Test and benchmark models: a torch zoo (``models.zoo``) and hand-built ONNX graphs
(``models.handbuilt``)."""
