"""A simulated Bitrix24 portal (REST + OAuth server) on loopback: the demo's and the tests' Bitrix24."""

from .portal import SimulatedPortal, SimMessage, encode_form

__all__ = ["SimulatedPortal", "SimMessage", "encode_form"]
