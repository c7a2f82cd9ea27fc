"""OpenID Connect: provider metadata and keys, the login flow, token checks, logout."""
