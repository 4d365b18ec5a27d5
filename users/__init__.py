"""Users and their access tokens."""
