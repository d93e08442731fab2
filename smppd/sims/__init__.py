"""Simulated HTTP SMS providers (SMS.ru, SMSC.ru) on loopback, for tests and ``smppd demo``.

They follow reference/providers.md to the letter, including the error answers
and the status callbacks, and can be told to fail (HTTP 500, a dropped
connection after the send was taken, a request-level error) to test outages.
"""
