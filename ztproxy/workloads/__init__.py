"""Workload identity: X.509 SVIDs (SPIFFE) presented over mutual TLS identify calling services.

``ids``: SPIFFE IDs and trust domain names. ``svid``: the X.509-SVID rules, a pure function
of a certificate, the trust bundles and the clock. ``bundles``: the trust bundle files, read
again when they change, and the listener's trust store that follows them. ``service``: the
app's side (aiohttp): the workload a request's client certificate names. Nothing but
``service`` imports aiohttp.
"""
