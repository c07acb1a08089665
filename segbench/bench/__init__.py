"""Measurements of cost, not quality: parameters and FLOPs of the papers' configurations
(``segbench complexity``), seconds per image of each evaluation mode (``segbench
inference-bench``) and loader against training-step throughput (``segbench throughput``)."""
