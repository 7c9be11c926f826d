"""proxygap."""
