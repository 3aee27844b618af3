"""Discovery over real libp2p hosts in one trio process: peers that only know a bootstrap
peer find each other through signed peer records, and only admitted peers are passed on."""

import time

import pytest
import trio

from gossiplearn.crypto.identity import Identity
from gossiplearn.peer.net.discovery import Discovery
from gossiplearn.peer.net.host import PEERS_PROTOCOL, PING_PROTOCOL, Admission, Host
from gossiplearn.peer.net.neighbours import NeighbourTable
from gossiplearn.protocol import ReplayGuard, SequenceCounter, sequence_start

pytestmark = pytest.mark.timeout(60)


def make_peer(identity: Identity, admitted: list[bytes], bootstrap: list[str]):
    admission = Admission(admitted)
    host = Host(identity, ["/ip4/127.0.0.1/tcp/0"], admission)
    table = NeighbourTable(identity.public_key, max_neighbours=8, timeout_s=5)
    discovery = Discovery(
        host,
        table,
        admission,
        identity,
        bootstrap=bootstrap,
        ping_interval_s=0.2,
        peer_exchange=True,
        replay=ReplayGuard(),
        sequence=SequenceCounter(sequence_start(int(time.time() * 1000))),
    )
    host.handle(PING_PROTOCOL, discovery.handle_ping)
    host.handle(PEERS_PROTOCOL, discovery.handle_peers)
    return host, table, discovery


async def test_peers_meet_through_a_bootstrap_peer_and_strangers_are_not_passed_on():
    hub, left, right, stranger = (Identity.generate() for _ in range(4))
    members = [hub.public_key, left.public_key, right.public_key]
    hub_host, hub_table, hub_discovery = make_peer(hub, members + [stranger.public_key], [])
    async with hub_host.run(), trio.open_nursery() as nursery:
        nursery.start_soon(hub_discovery.run)
        hub_address = hub_host.addrs()[0]
        others = [make_peer(identity, members, [hub_address]) for identity in (left, right)]
        others.append(make_peer(stranger, [hub.public_key], [hub_address]))
        async with others[0][0].run(), others[1][0].run(), others[2][0].run():
            for _, _, discovery in others:
                nursery.start_soon(discovery.run)
            left_table, right_table = others[0][1], others[1][1]

            def met() -> bool:
                now = time.monotonic()
                right_seen = left_table.get(right.public_key)
                left_seen = right_table.get(left.public_key)
                return bool(
                    right_seen
                    and left_seen
                    and left_table.is_live(right_seen, now)
                    and right_table.is_live(left_seen, now)
                    and right_seen.addrs
                    and left_seen.addrs  # addresses come only from records
                )

            with trio.fail_after(30):
                while not met():
                    await trio.sleep(0.1)
            # Neither bootstraps to the other, so whichever met first learned of it by exchange
            # (the other may have been reached by that peer's ping first: "inbound").
            sources = {
                left_table.get(right.public_key).source,
                right_table.get(left.public_key).source,
            }
            assert "exchange" in sources
            # The hub admits the stranger, but left and right do not: never passed to them.
            assert stranger.public_key not in left_table
            assert stranger.public_key not in right_table
            nursery.cancel_scope.cancel()


def test_a_peer_record_with_a_far_expiry_is_refused_and_only_two_of_its_addresses_are_dialed():
    from gossiplearn.protocol import PeerRecord, Peers, encode_envelope

    me, friend = Identity.generate(), Identity.generate()
    table = NeighbourTable(me.public_key, max_neighbours=8, timeout_s=5)
    rejected: list[str] = []
    discovery = Discovery(
        None,  # type: ignore[arg-type]  # records are ingested without a network
        table,
        Admission([friend.public_key]),
        me,
        bootstrap=[],
        ping_interval_s=1.0,
        peer_exchange=True,
        replay=ReplayGuard(),
        sequence=SequenceCounter(1),
        on_rejected=rejected.append,
    )
    now = int(time.time() * 1000)
    addrs = tuple(f"/ip4/10.1.2.{i}/tcp/80/p2p/{friend.peer_id}" for i in range(8))

    def frame(record: PeerRecord, seq: int) -> bytes:
        return encode_envelope(
            friend, friend.public_key, me.public_key, Peers((record,)), seq=seq, ts=now
        )

    fifty_years = now + 50 * 365 * 86_400_000
    discovery._ingest(
        friend.public_key,
        frame(PeerRecord.create(friend, friend.public_key, addrs, 1, fifty_years), 1),
    )
    assert rejected == ["peer_record_expiry"]
    assert friend.public_key not in table
    hour = now + 3_600_000
    discovery._ingest(
        friend.public_key, frame(PeerRecord.create(friend, friend.public_key, addrs, 2, hour), 2)
    )
    assert rejected == ["peer_record_expiry"]
    assert table.get(friend.public_key).dial_plan() == list(addrs[:2])


class OneFrameHost:
    """Enough of a Host for a discovery handler: the stream holds one frame; what we send is
    recorded."""

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.sent: list[bytes] = []

    async def receive_frame(self, key: bytes, stream: object, max_bytes: int) -> bytes:
        return self.frame

    async def send_frame(self, key: bytes, stream: object, frame: bytes) -> None:
        self.sent.append(frame)

    def addrs(self) -> list[str]:
        return []


class ClosableStream:
    async def close(self) -> None:
        return None

    def get_remote_address(self) -> tuple[str, int]:
        return ("127.0.0.1", 4001)


async def answer_to(frame: bytes, me: Identity, asker: Identity, rejected: list[str]) -> list:
    """What our PEERS handler sends ``asker`` for a PEERS request ``frame``."""
    host = OneFrameHost(frame)
    discovery = Discovery(
        host,  # type: ignore[arg-type]
        NeighbourTable(me.public_key, max_neighbours=8, timeout_s=5),
        Admission([asker.public_key]),
        me,
        bootstrap=[],
        ping_interval_s=1.0,
        peer_exchange=True,
        replay=ReplayGuard(),
        sequence=SequenceCounter(1),
        on_rejected=rejected.append,
    )
    await discovery.handle_peers(asker.public_key, ClosableStream())
    return host.sent


async def test_a_peers_request_that_does_not_verify_gets_no_signed_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gossiplearn.protocol import Peers, encode_envelope

    me, asker, forger = (Identity.generate() for _ in range(3))
    now = int(time.time() * 1000)
    # In the asker's name (the connection's authenticated peer), signed by someone else.
    forged = bytearray(
        encode_envelope(forger, asker.public_key, me.public_key, Peers(()), seq=1, ts=now)
    )
    genuine = encode_envelope(asker, asker.public_key, me.public_key, Peers(()), seq=2, ts=now)
    rejected: list[str] = []
    assert await answer_to(bytes(forged), me, asker, rejected) == []
    assert rejected == ["signature"]
    assert await answer_to(b"\x00garbage", me, asker, rejected) == []
    assert len(rejected) == 2
    assert len(await answer_to(genuine, me, asker, rejected)) == 1  # verified: answered
    # Without the check (the handler answered whatever it had read), the forged request is
    # answered with a frame we signed.
    monkeypatch.setattr(Discovery, "_ingest", lambda self, sender, frame: True)
    assert len(await answer_to(bytes(forged), me, asker, [])) == 1
