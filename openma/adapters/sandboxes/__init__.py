"""Sandbox adapters behind :mod:`openma.ports.sandbox`: LocalSubprocess, E2B and Daytona.

Each is found by name through :data:`openma.registry.sandboxes`; the provider SDKs are imported only when
their adapter is chosen.
"""
