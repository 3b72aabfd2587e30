"""One module per ``lldyn`` subcommand; each defines ``register(subparsers)``. See :mod:`lldyn.cli`."""


def add_trust_remote_code(parser) -> None:
    """The one ``--trust-remote-code`` flag of every command that loads a model (off unless given)."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a Hub model run the Python code it ships with (off unless given; a run "
                             "directory's config never turns it on)")
