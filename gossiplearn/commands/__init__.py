"""One module per ``gossiplearn`` command (like Flower's CLI). Each keeps heavy imports
(libp2p, torch) inside the command, so ``gossiplearn --help`` and ``status`` stay fast."""
