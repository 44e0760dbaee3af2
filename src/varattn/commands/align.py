"""Placeholder: subcommands are added by the module's owner."""


def register(sub) -> None:
    return None
