"""Core sub-commands of the ``avatar4d`` CLI; each module has ``register(subparsers)``."""
