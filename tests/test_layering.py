"""The pure layers stay pure: importing them must not pull in trio, libp2p or torch."""

import subprocess
import sys


def test_crypto_and_protocol_import_no_io_or_ml_stack():
    code = (
        "import sys, gossiplearn.crypto, gossiplearn.protocol; "
        "heavy = {'trio', 'libp2p', 'torch'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
