"""Just-in-time access: people ask for time-bound access to a route, approvers grant it, it ends by itself.

- :mod:`~ztproxy.grants.model`: a request and its state machine (pure, ``now`` passed in);
- :mod:`~ztproxy.grants.registry`: the requests in the session store, changed under a lock, announced;
- :mod:`~ztproxy.grants.view`: each worker's copy of the active grants, checked per request;
- :mod:`~ztproxy.grants.webhooks`: each step posted to approvers' tools, signed, retried;
- :mod:`~ztproxy.grants.pages` and :mod:`~ztproxy.grants.html`: ``/.ztproxy/access/``;
- :mod:`~ztproxy.grants.service`: the app's side (``GRANTS``); :mod:`~ztproxy.grants.admin`: the admin API's.

The policy side is the ``grant`` criterion (:mod:`ztproxy.policy.criteria.grant`): it holds
while ``RequestFacts.granted``, which the authorization stage reads from this worker's view.
"""
