"""Console tools: talk2sam-demo, talk2sam-bench, talk2sam-weights, and the node harness they
and the tests share."""
