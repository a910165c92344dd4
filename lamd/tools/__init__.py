"""Command-line tools beside the daemon (LAM's ``tools/``): ``lamd-tkill``."""
