"""The market's network face: ``depin serve`` (a FastAPI app), RFC 9421 request signatures,
RFC 9457 problems, and the HTTP implementation of the SDK's ``Market`` protocol.

    wire.py      the HTTP contract: paths and the request/response models, one definition
    problems.py  DepinError <-> application/problem+json, both ways
    signing.py   RFC 9421 signatures: the client's httpx.Auth, the server's verification
    app.py       the service: routes, authentication, limits, the scheduler as a lifespan task
    remote.py    HttpMarket / AsyncHttpMarket: the Market protocol over httpx
"""
