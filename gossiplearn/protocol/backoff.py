"""Whom a peer neither invites nor answers, for how long: backing off from holders.

An insider that invites, sends a ROSTER and goes silent holds its victims until the round's
deadline, and can start again at once: in version 1 that stopped every honest round of a
4-peer network. Here every round that aborts because of a member (it went silent, sent
something invalid, aborted it) is a *strike* against that member, and a struck peer is backed
off: not invited, and its invitations declined (BUSY "backoff"), for ``base_ms * 2^(strikes -
1)``, at most ``max_ms``. A round finished with the peer takes one strike off, so an honest
peer that aborted once (it crashed, say) is back after one short period, while a peer that
keeps holding rounds (and finishes one now and then to be forgiven) is met with exponentially
longer refusals: the share of time it holds its victims falls as 1 / 2^strikes.

A peer proven to have equivocated (see evidence.py) is *refused* until an operator clears it.
Two peers that group testing found always failing together (suspicion.py) are *kept apart*:
for a backoff period, no group of this peer holds both.

Sans-I/O like the rest of the protocol: the caller passes the time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

#: Peers remembered at once. Only members of this peer's own groups can be struck, and those
#: must be admitted, so this bounds memory even with open admission; the oldest entries whose
#: backoff has expired go first.
MAX_TRACKED = 4096


@dataclass
class _Record:
    strikes: int = 0
    until_ms: int = 0
    refused: bool = False


class Backoff:
    """Strikes, backoff periods and refusals per peer (public key)."""

    def __init__(self, base_ms: int = 5_000, max_ms: int = 3_600_000) -> None:
        if not 0 <= base_ms <= max_ms:
            raise ValueError("need 0 <= base_ms <= max_ms")
        self.base_ms = base_ms
        self.max_ms = max_ms
        self._records: OrderedDict[bytes, _Record] = OrderedDict()
        #: pairs kept apart -> until when
        self._apart: OrderedDict[frozenset[bytes], tuple[int, int]] = OrderedDict()

    def strike(self, peer: bytes, now_ms: int) -> int:
        """One more round that failed because of ``peer``; returns when its backoff ends."""
        record = self._record(peer)
        record.strikes += 1
        period = min(self.max_ms, self.base_ms << min(record.strikes - 1, 40))
        record.until_ms = max(record.until_ms, now_ms + period)
        self._records.move_to_end(peer)
        self._prune(now_ms)
        return record.until_ms

    def forgive(self, peer: bytes) -> None:
        """A round with ``peer`` finished: one strike off (a refusal stays)."""
        record = self._records.get(peer)
        if record is not None and not record.refused:
            record.strikes -= 1
            if record.strikes <= 0:
                del self._records[peer]

    def keep_apart(self, a: bytes, b: bytes, now_ms: int) -> int:
        """Form no group holding both ``a`` and ``b`` for a while (longer each time); returns
        until when."""
        pair = frozenset((a, b))
        times, _ = self._apart.get(pair, (0, 0))
        period = min(self.max_ms, self.base_ms << min(times, 40))
        self._apart[pair] = (times + 1, now_ms + period)
        self._apart.move_to_end(pair)
        while len(self._apart) > MAX_TRACKED:
            self._apart.popitem(last=False)
        return now_ms + period

    def apart(self, members: Iterable[bytes], now_ms: int) -> bool:
        """Whether ``members`` hold a pair kept apart now."""
        if not self._apart:
            return False
        present = set(members)
        return any(until > now_ms and pair <= present for pair, (_, until) in self._apart.items())

    def refuse(self, peer: bytes) -> None:
        """Refuse ``peer`` until :meth:`clear` (it equivocated)."""
        self._record(peer).refused = True
        self._records.move_to_end(peer)

    def clear(self, peer: bytes) -> bool:
        """An operator cleared ``peer``: no refusal, no strikes, kept apart from nobody. True
        if there was any."""
        pairs = [pair for pair in self._apart if peer in pair]
        for pair in pairs:
            del self._apart[pair]
        return self._records.pop(peer, None) is not None or bool(pairs)

    def blocked(self, peer: bytes, now_ms: int) -> str | None:
        """ "refused", "backoff", or None if ``peer`` may be invited and answered."""
        record = self._records.get(peer)
        if record is None:
            return None
        if record.refused:
            return "refused"
        return "backoff" if now_ms < record.until_ms else None

    def snapshot(self, now_ms: int) -> dict[bytes, dict[str, object]]:
        """Every peer blocked now: {key: {strikes, backoff_s, refused}}."""
        return {
            peer: {
                "strikes": record.strikes,
                "backoff_s": round(max(0, record.until_ms - now_ms) / 1000, 3),
                "refused": record.refused,
            }
            for peer, record in self._records.items()
            if record.refused or record.until_ms > now_ms
        }

    def _record(self, peer: bytes) -> _Record:
        record = self._records.get(peer)
        if record is None:
            record = self._records[peer] = _Record()
        return record

    def _prune(self, now_ms: int) -> None:
        if len(self._records) <= MAX_TRACKED:
            return
        for peer in [p for p, r in self._records.items() if not r.refused and r.until_ms <= now_ms]:
            del self._records[peer]
            if len(self._records) <= MAX_TRACKED:
                return
