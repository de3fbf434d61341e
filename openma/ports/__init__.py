"""The ports: small protocols that the core depends on and that adapters implement.

One module per port; each docstring is the contract an adapter must honour (and that ``openma.testing``
checks).
"""
