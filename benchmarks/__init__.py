"""The benchmarks behind the README's figures, run as modules: `python -m benchmarks.<name> --help`."""
