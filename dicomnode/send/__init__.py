"""Sending results: the SCU, the outbox and the silent-mode ledger.

`scu` does C-STORE (one association per destination) and C-ECHO; `outbox` keeps
every send in the index and retries it with backoff until it is delivered or
FAILED_SEND; `ledger` appends one row per study version to ``ledger.csv``, which
is all that silent mode produces for clinical destinations.
"""
