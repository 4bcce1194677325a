"""The market's network face: ``depin serve`` (a FastAPI app), RFC 9421 request signatures,
RFC 9457 problems, and the HTTP implementation of the SDK's ``Market`` protocol.

    wire.py      the HTTP contract: paths and the request/response models, one definition
    problems.py  DepinError <-> application/problem+json, both ways
    signing.py   RFC 9421 signatures: the client's httpx.Auth, the server's verification
    auth.py      who is asking: a signed request's checks, rate limits, what a caller may do
    routes.py    one route per market operation, each saying who may call it
    batching.py  signed submissions, one per request, handed to the market in groups
    app.py       the service: routes, problem+json, limits, the scheduler as a lifespan task
    server.py    the app factories uvicorn imports (one market per worker process)
    cli.py       ``depin serve``
    remote.py    HttpMarket / AsyncHttpMarket: the Market protocol over httpx
"""
