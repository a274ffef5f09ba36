"""BuildKit's own gRPC API, with a session: the wire layer under the BuildKit builder.

- `client`: `connect` (through a Docker engine's `POST /grpc`, or a buildkitd address),
  `Control.list_workers`, `Control.attach(session)`, `Control.solve(...)`.
- `session`: `Session`, what a build may ask of this machine (dirs, secrets, ssh agents,
  registry credentials, exports); `h2_server` serves it from the bytes of the Control.Session
  call (gRPC on HTTP/2 with `h2`, many small messages gathered into few writes).
- `transport`: the h2c upgrade (`Engine.upgrade`) and the unix-socket bridge for grpcio; buildkitd
  addresses and TLS.
- `fswalk`, `diffcopy_send`, `diffcopy_receive`: fsutil's file transfer, both ways.
- `providers`: secrets, ssh agent forwarding, registry credentials. `patterns`: Go's
  filepath.Match and `.dockerignore` patterns (pure).
- `proto/`: our .proto files of the messages used (field numbers as on the wire) and their
  generated code (`invoke protos`).

Nothing here is imported unless a build is sent (grpc, protobuf and h2 take 0.05-0.1 s to import).
"""

import os

# grpc's C core logs every failed TLS handshake of a retrying channel to stderr; our errors
# say what went wrong in one line. A user's own setting wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
