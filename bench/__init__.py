"""Benchmarks. Each is a module run from the repository root, e.g. ``python -m bench.eval``, so that
it imports the project's modules (``eval``, ``train``, ...) rather than its own file (bench/README.md)."""
