"""HTTP/2: clients of the proxy over h2 (TLS with ALPN, or h2c), and gRPC upstreams.

Frames, HPACK and the protocol's state machine are the ``h2`` library's (python-hyper,
sans-IO); these modules own the sockets, windows, limits and the bridge to aiohttp:

- ``endpoint.py``: one end of a connection, its bytes and flow control (both sides);
- ``server.py``: a client's connection, its limits against the HTTP/2 attacks, its drain;
- ``stream.py``: one request stream served by the app as an aiohttp request;
- ``client.py``: connections to gRPC upstreams (h2c or TLS), streams both ways, trailers.
"""
