"""Benchmarks of lth_sparse's kernels against the torch way: one script per op, results in bench/results/."""
