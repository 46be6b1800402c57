"""Package data, not code: the bundled configuration, installed as ``jobs.conf`` (see setup.py)."""
