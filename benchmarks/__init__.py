"""Benchmarks of diffexp against diffusers and deepinv: speed, memory, quality vs steps (``make bench``).

``python -m benchmarks.run`` runs them and writes JSON and a Markdown table to ``benchmarks/results/``;
``python -m benchmarks.gpu`` is the one-command GPU benchmark. Method: ``benchmarks/README.md``.
"""
