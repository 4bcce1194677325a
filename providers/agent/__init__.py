"""The node agent a provider runs on its own machine (``depin agent run``).

hardware   what the machine has: NVIDIA's management library, or --simulate-gpus
link       the coordinator over signed HTTP, with the provider's key
pull       pull mode: heartbeats, the long-poll for work, sandboxed runs, receipts
raymode    Ray mode: a raylet that joins the operator's cluster, and heartbeats
"""
