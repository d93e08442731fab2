"""Every simulated peer of smppd, on loopback: the demo's and the tests' peers, not the product.

``smpp`` an SMSC over SMPP 3.4 (its verdicts and fault modes in ``smpp_policy``),
``bitrix24`` a Bitrix24 portal with its OAuth server, ``smsru`` and ``smsc`` the HTTP
providers SMS.ru and SMSC.ru.  Each follows ``shared/reference/`` and the peers'
documented behaviour, including their error answers, and can be told to fail.
No product module imports this package (tests/test_structure.py holds that).
"""
