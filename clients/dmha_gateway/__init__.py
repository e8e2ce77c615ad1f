"""DMHA's HTTP gateway: an OpenAI-compatible chat API and a web chat page.

It is a gRPC client of the DMHA server (through :mod:`dmha_client`) and holds no
state of its own. ``dmha gateway`` runs it; :func:`create_app` gives the ASGI app.
"""

from dmha_gateway.app import DEFAULT_GATEWAY_PORT, GatewaySettings, create_app
from dmha_gateway.errors import APIError, from_dmha_error

__all__ = ["DEFAULT_GATEWAY_PORT", "APIError", "GatewaySettings", "create_app", "from_dmha_error"]
