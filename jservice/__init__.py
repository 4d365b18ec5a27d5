"""A jService-compatible stand-in (jservice.io shut down in 2023): `GET /api/random?count=N`."""
