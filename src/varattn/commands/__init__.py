"""Subcommands of ``varattn`` beyond train/evaluate/toy-data; each module has ``register(subparsers)``."""
