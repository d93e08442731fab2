"""The ``smppd`` commands: run, demo, admin, report, cost, text, contacts."""
