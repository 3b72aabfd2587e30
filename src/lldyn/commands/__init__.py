"""One module per ``lldyn`` subcommand; each defines ``register(subparsers)``. See :mod:`lldyn.cli`."""
