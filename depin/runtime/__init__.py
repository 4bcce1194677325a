"""What runs: the scheduler's driver loop, one cycle, the Ray executor, and the records
that pass between them and the market (``work``).

Nothing here touches the database: the driver calls the market through the
``CycleMarket`` protocol, so the same loop serves any market that offers it.
"""
