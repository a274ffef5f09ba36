"""Talking to a Docker engine: `client.Engine` (clients, kind, the error seam), images,
containers, the classic builder's stream, and BuildKit's wire (`buildkit/`)."""
