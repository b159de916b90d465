"""The spec's notifications example: per-user rooms and an authenticated ``POST /notify``."""
