"""The subcommands of ``varattn``, one module each, with ``register(subparsers)`` and ``run(args) -> int``.

``varattn.cli.COMMAND_MODULES`` lists them; ``common`` holds what they share.
"""
