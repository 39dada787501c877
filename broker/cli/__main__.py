"""``python -m broker.cli``: the ``broker`` command."""

from broker.cli.root import main

main()
