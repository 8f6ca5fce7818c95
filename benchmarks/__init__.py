"""The benchmarks behind the figures of docs/results.md, run as modules: `python -m benchmarks.<name> --help`."""
