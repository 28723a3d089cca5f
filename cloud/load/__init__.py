"""Load tools: the load generator and the serving and hostile-traffic benchmarks."""
