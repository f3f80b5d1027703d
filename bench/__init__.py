"""kinko benchmarks (`make bench`): every figure is a ratio against a reference
measured in the same run.  See docs/performance.md."""
