"""``depin bench``: the measuring behind every performance target.

cli.py        the commands: parse options, print (``--json`` for machines)
workload.py   synthetic demand: job templates near users in real cities
scheduler.py  decision latency, batch placements/s with the commit, plan quality
exact.py      the quality reference (CP-SAT), sharing no code with ``scheduler/``
ledger.py     allocations committed per second against one per transaction
manifest.py   envelopes verified per second against raw Ed25519
api.py        a live ``depin serve`` driven through the SDK
lifecycle.py  submit to running, failover and jobs/s through ``depin serve`` and agents
processes.py  the servers and agents a bench starts, each in a process group of its own
scratch.py    the database a bench writes to: ``--db`` on PostgreSQL in a scratch schema
"""
