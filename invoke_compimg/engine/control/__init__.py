"""BuildKit's own gRPC API, with a session: the wire layer under the BuildKit builder.

Nothing here is imported unless a build is sent (grpc alone takes 0.1-0.25 s to import).
"""
