"""Pure cryptographic primitives: identities, signatures, key agreement, ring encoding, masks.

Nothing here imports trio, libp2p or torch.
"""

from gossiplearn.crypto.agreement import (
    EphemeralKey,
    KeyAgreementError,
    derive_pair_seed,
    pair_seed,
    shared_secret,
)
from gossiplearn.crypto.identity import (
    Identity,
    IdentityError,
    KeyFilePermissionError,
    load_key_file,
    peer_id_from_public_key,
    public_key_from_peer_id,
    write_key_file,
)
from gossiplearn.crypto.masks import apply_pairwise_masks, prg
from gossiplearn.crypto.ring import (
    DEFAULT_FRAC_BITS,
    RING32,
    RING64,
    decode,
    decode_scalar,
    encode,
    encode_scalar,
)
from gossiplearn.crypto.signing import sign, verify

__all__ = [
    "DEFAULT_FRAC_BITS",
    "RING32",
    "RING64",
    "EphemeralKey",
    "Identity",
    "IdentityError",
    "KeyAgreementError",
    "KeyFilePermissionError",
    "apply_pairwise_masks",
    "decode",
    "decode_scalar",
    "derive_pair_seed",
    "encode",
    "encode_scalar",
    "load_key_file",
    "pair_seed",
    "peer_id_from_public_key",
    "prg",
    "public_key_from_peer_id",
    "shared_secret",
    "sign",
    "verify",
    "write_key_file",
]
