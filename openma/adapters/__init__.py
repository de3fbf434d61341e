"""Adapters: the outside world behind the ports. Each one imports its driver lazily."""
