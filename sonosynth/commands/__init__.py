"""CLI command groups; each command is a thin call into the library API."""
