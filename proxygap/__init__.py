"""proxygap: measure, predict and mitigate reward-model overoptimization."""

__version__ = "0.1.0"
