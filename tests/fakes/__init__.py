"""Local stand-ins for remote providers, served on loopback, that the real SDKs talk to."""
