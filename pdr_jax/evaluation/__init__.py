"""pdr_jax.evaluation: the restoration benchmark behind tools/evaluate.py.

benchmark.py   clean held-out crops -> simulated Poisson-Gaussian cases; run methods, score
methods.py     METHODS, a plain dict of method factories (pdr, conditional, baselines),
               pdr settings and their ablations
resolution.py  the same benchmark at several processing (tile) resolutions + a recommendation
report.py      CSV, markdown tables, PNG figures, the regression check against an earlier CSV
scaling.py     pdr-restore's time and peak memory against the image size (pdr-bench)
torch_worker.py  PyTorch EDM timed beside pdr_jax in its own process (pdr-bench --torch-python)
"""
