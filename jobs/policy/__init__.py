"""Microsegmentation recommendations: least-privilege network policies learned from the lake's flows.

``learn`` reads evidence from the lake, ``model`` builds per-workload rules from it,
``render`` turns rules into Kubernetes, Calico and AdminNetworkPolicy objects,
``replay`` proves what those objects would allow and deny on historical flows,
``stability`` tracks how the rules change across runs and ``report`` writes the results.
"""
