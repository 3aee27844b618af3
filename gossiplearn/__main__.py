"""``python -m gossiplearn``: the same CLI as the ``gossiplearn`` command."""

from gossiplearn.cli import main

main()
