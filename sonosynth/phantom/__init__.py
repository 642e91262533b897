"""Physics-inspired B-mode phantom simulator and anatomy generators (the built-in data)."""
