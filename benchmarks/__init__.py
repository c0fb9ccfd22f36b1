"""Ratio benchmarks of pyro_mle against plain PyTorch, NumPy, scikit-learn, Pyro and NumPyro.

Run ``python -m benchmarks.run`` (``--quick`` for a short run); see ``benchmarks/run.py``.
"""
