"""Route policy, sans-I/O: plain state machines that take events and ``now``, return decisions.

The shape of the SMPP session (and of h11, aioquic): nothing here reads a clock,
sleeps, sends or writes; the asyncio routes (``routes/smpp.py``, ``routes/http.py``)
feed what happened and carry out what the policy answers, so every rule is tested
second by second without a socket (tests/test_route_policy.py, test_resend_policy.py).

* ``cap``: at most N per any sliding second, counted as operators count (segments, requests);
* ``flow``: ESME_RMSGQFUL pauses, ESME_RTHROTTLED halves rate and window and recovers in seconds;
* ``submit``: the SMPP route's verdict on every refused submit_sm (the two above, plus the
  requeue of temporary errors bounded in count and age), and when the next may go;
* ``backlog``: which open messages wait in memory and which in the store (spill, refill);
* ``batch``: which messages of an HTTP route go in one request;
* ``resend``: when an HTTP route may send again, never what the provider took.

How soon one bind reconnects is the connection's (``smpp/reconnect.py``), not the route's.
"""
