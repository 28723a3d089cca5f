"""Serving: the candidate service, the gRPC server and its interceptors (auth, limits, metrics, telemetry), dynamic batching, replicas, and the operators' HTTP surface."""
