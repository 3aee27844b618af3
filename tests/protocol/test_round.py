"""The round state machine, fed by hand: correctness for k = 3..8, matchmaking rules,
determinism. (Faults over the in-memory network are in tests/sim/test_round_faults.py.)"""

import random
from collections import deque
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.crypto.identity import Identity
from gossiplearn.protocol.aggregation import part_bounds
from gossiplearn.protocol.config import RoundConfig
from gossiplearn.protocol.envelope import verify_envelope
from gossiplearn.protocol.events import (
    MessageRefused,
    PeerSuspected,
    RoundAborted,
    RoundCancelled,
    RoundFinished,
    RoundUsageError,
    Send,
    Wake,
)
from gossiplearn.protocol.messages import Abort
from gossiplearn.protocol.node import Node

SCHEMA = b"s" * 32
START_MS = 1_700_000_000_000


def make_nodes(count: int, config: RoundConfig, seed: int = 0) -> list[Node]:
    return [
        Node(
            Identity(bytes([seed, i + 1]) * 16),
            config,
            rng=random.Random(seed * 1000 + i),
            now_ms=START_MS,
        )
        for i in range(count)
    ]


def route(
    nodes: list[Node],
    actions: list,
    now_ms: int = START_MS,
    first: bytes | None = None,
    *,
    sent: list[tuple[bytes, Send]] | None = None,
    drop: Callable[[bytes, Send], bool] | None = None,
) -> dict[bytes, list]:
    """Deliver every Send in FIFO order (no latency) until quiet, ticking a node that asks to
    be woken now (Aggregation.work); returns outcomes per node.
    ``actions`` came from the node with key ``first`` (default: the first node). Every
    (sender, Send) is appended to ``sent``; those ``drop`` is true for are lost."""
    by_key = {n.public_key: n for n in nodes}
    outcomes: dict[bytes, list] = {k: [] for k in by_key}
    queue = deque((first or nodes[0].public_key, a) for a in actions)
    while queue:
        origin, action = queue.popleft()
        if isinstance(action, Send):
            if sent is not None:
                sent.append((origin, action))
            if drop is not None and drop(origin, action):
                continue
            target = by_key[action.to]
            queue.extend(
                (action.to, a) for a in target.receive(action.frame, now_ms, from_peer=origin)
            )
        elif isinstance(action, Wake):
            if action.at_ms <= now_ms:  # the round streams: the node has shards to send now
                queue.extend((origin, a) for a in by_key[origin].tick(now_ms))
        else:
            outcomes[origin].append(action)
    return outcomes


def contribute(nodes: list[Node], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random vectors, and random weights up to the nodes' cap (all 1 with equal weights)."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(0, 3, size=(len(nodes), n)).astype(np.float32)
    weights = rng.integers(1, nodes[0].config.max_weight + 1, size=len(nodes))
    for node, vector, weight in zip(nodes, vectors, weights, strict=True):
        node.set_contribution(vector, int(weight), SCHEMA)
    return vectors, weights


@given(
    k=st.integers(3, 8),
    n=st.integers(1, 5000),
    seed=st.integers(0, 2**16),
    max_weight=st.sampled_from([1, 10_000]),
)
@settings(max_examples=40)
def test_every_member_gets_the_same_weighted_average(k, n, seed, max_weight):
    config = RoundConfig(max_group_size=k, shard_bytes=4096, max_weight=max_weight)
    nodes = make_nodes(k, config, seed % 250)
    vectors, weights = contribute(nodes, n, seed)
    outcomes = route(nodes, nodes[0].start_round([x.public_key for x in nodes[1:]], START_MS))

    results = [outcomes[node.public_key] for node in nodes]
    assert all(len(r) == 1 and isinstance(r[0], RoundFinished) for r in results), results
    averages = [r[0].average for r in results]
    assert all(np.array_equal(averages[0], a) for a in averages[1:])  # bit-identical
    expected = np.average(vectors.astype(np.float64), axis=0, weights=weights)
    # Each member encodes (w_i / W) x_i, W the sum of the weights declared in the ACCEPTs
    # (round v2 scaled by S = k * max_weight and back by S / W, multiplying the error): k
    # rounding errors of at most 2^-(f+1) each, then float32.
    total = int(weights.sum())
    tolerance = k * 2.0 ** -(config.frac_bits + 1)
    assert np.abs(averages[0] - expected).max() <= tolerance + 1e-6 * np.abs(expected).max()
    assert all(r[0].total_weight == total for r in results)
    assert not any(node.busy for node in nodes)


def test_bytes_per_member_are_about_twice_the_model():
    k, n = 4, 200_000
    nodes = make_nodes(k, RoundConfig(max_group_size=k))
    contribute(nodes, n, 1)
    outcomes = route(nodes, nodes[0].start_round([x.public_key for x in nodes[1:]], START_MS))
    for node in nodes:
        stats = outcomes[node.public_key][0].stats
        assert 2 * (k - 1) / k <= stats.bytes_sent / (4 * n) <= 2.1


def test_each_member_sends_in_the_order_of_round_v3():
    # INVITE -> ACCEPT -> ROSTER -> READY -> PART -> REDUCED -> CONFIRM: the initiator's
    # ROSTER is its statement (no READY); every other member sends READY to every other one
    # (the initiator included) before anything masked.
    k = 4
    nodes = make_nodes(k, RoundConfig(max_group_size=k))
    contribute(nodes, 50, 3)
    sent: list[tuple[bytes, Send]] = []
    outcomes = route(
        nodes, nodes[0].start_round([n.public_key for n in nodes[1:]], START_MS), sent=sent
    )
    assert all(isinstance(outcomes[n.public_key][0], RoundFinished) for n in nodes)
    for i, node in enumerate(nodes):
        kinds = [send.kind for origin, send in sent if origin == node.public_key]
        steps = [kind for j, kind in enumerate(kinds) if j == 0 or kinds[j - 1] != kind]
        if i == 0:
            assert steps == ["INVITE", "ROSTER", "PART", "REDUCED", "CONFIRM"]
            assert kinds.count("INVITE") == kinds.count("ROSTER") == k - 1
        else:
            assert steps == ["ACCEPT", "READY", "PART", "REDUCED", "CONFIRM"]
            assert kinds.count("ACCEPT") == 1 and kinds.count("READY") == k - 1
            readies = {
                send.to
                for origin, send in sent
                if origin == node.public_key and send.kind == "READY"
            }
            assert readies == {n.public_key for n in nodes} - {node.public_key}
        for kind in ("PART", "REDUCED", "CONFIRM"):  # one shard per part here
            assert kinds.count(kind) == k - 1


def test_the_round_streams_shard_by_shard():
    # Parts masked, sent, reduced and sent back shard by shard: a reducer sends its first
    # REDUCED shard before it has every member's PART shards, and every member sends its
    # first PART shard before it has masked its whole vector. Only the last REDUCED shard
    # of a part carries the part's digest (the reducer's statement about the whole part).
    k, n = 4, 40_000
    config = RoundConfig(max_group_size=k, shard_bytes=4096)
    nodes = make_nodes(k, config)
    vectors, _ = contribute(nodes, n, 5)
    sent: list[tuple[bytes, Send]] = []
    outcomes = route(
        nodes, nodes[0].start_round([x.public_key for x in nodes[1:]], START_MS), sent=sent
    )
    averages = [outcomes[node.public_key][0].average for node in nodes]
    assert all(np.array_equal(averages[0], a) for a in averages[1:])
    assert np.abs(averages[0] - vectors.mean(axis=0)).max() < 1e-5
    for node in nodes:
        me = node.public_key
        first_reduced = next(
            i for i, (origin, send) in enumerate(sent) if origin == me and send.kind == "REDUCED"
        )
        last_part_in = max(
            i for i, (_, send) in enumerate(sent) if send.to == me and send.kind == "PART"
        )
        assert first_reduced < last_part_in
        reduced = [
            verify_envelope(send.frame).body
            for origin, send in sent
            if origin == me and send.kind == "REDUCED"
        ]
        shards_per_part = reduced[0].shard.total
        assert shards_per_part == -(-(n // k) * 4 // 4096) > 1
        finals = [body for body in reduced if body.part_digest]
        assert len(finals) == k - 1 and all(b.final for b in finals)
        assert {b.shard.index for b in finals} == {shards_per_part - 1}
        assert sum(1 for body in reduced if not body.part_digest) == (k - 1) * (shards_per_part - 1)


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_shards_out_of_order_are_taken_in_order(order):
    # The reducer adds PART shards, and members hash REDUCED shards, in the order of their
    # offsets whatever order they arrive in (a shard ahead of a gap waits for it).
    k, n = 3, 9_000
    config = RoundConfig(max_group_size=k, shard_bytes=1024)
    nodes = make_nodes(k, config, seed=9)
    vectors, _ = contribute(nodes, n, 6)
    rng = random.Random(order)
    by_key = {x.public_key: x for x in nodes}
    outcomes: dict[bytes, list] = {x.public_key: [] for x in nodes}
    pending = [(nodes[0].public_key, a) for a in nodes[0].start_round(list(by_key)[1:], START_MS)]
    while pending:
        # Deliver the other actions first, then the bulky ones in a scrambled order.
        bulky = [
            (o, a) for o, a in pending if isinstance(a, Send) and a.kind in ("PART", "REDUCED")
        ]
        rest = [(o, a) for o, a in pending if (o, a) not in bulky]
        if order == "reversed":
            bulky.reverse()
        else:
            rng.shuffle(bulky)
        pending = []
        for origin, action in rest + bulky:
            if isinstance(action, Send):
                target = by_key[action.to]
                pending += [
                    (action.to, a) for a in target.receive(action.frame, START_MS, from_peer=origin)
                ]
            elif isinstance(action, Wake):
                if action.at_ms <= START_MS:
                    pending += [(origin, a) for a in by_key[origin].tick(START_MS)]
            else:
                outcomes[origin].append(action)
    results = [outcomes[x.public_key] for x in nodes]
    assert all(len(r) == 1 and isinstance(r[0], RoundFinished) for r in results), results
    assert np.abs(results[0][0].average - vectors.mean(axis=0)).max() < 1e-5


def report_of(send: Send) -> Abort:
    """The ABORT a CLOSING member sent: its reason and report (``accused``)."""
    body = verify_envelope(send.frame).body
    assert isinstance(body, Abort), body
    return body


def time_out_together(nodes: list[Node], deadline: int) -> dict[bytes, tuple[Abort, RoundAborted]]:
    """Every node's deadline passes at ``deadline``: each enters CLOSING (no outcome yet) and
    sends every other member the same ABORT carrying its report; the reports are delivered,
    and each node ends exactly closing_grace_ms later. Returns {node: (its ABORT, outcome)}."""
    grace = nodes[0].config.closing_grace_ms
    keys = [n.public_key for n in nodes]
    sent: dict[bytes, list[Send]] = {}
    for node in nodes:
        actions = node.tick(deadline)
        assert actions[-1] == Wake(deadline + grace)  # CLOSING: nothing ends at the deadline
        sent[node.public_key] = [a for a in actions[:-1] if isinstance(a, Send)]
        assert len(sent[node.public_key]) == len(actions) - 1
        assert sorted(s.to for s in sent[node.public_key]) == sorted(set(keys) - {node.public_key})
        assert len({report_of(s) for s in sent[node.public_key]}) == 1  # one report, to all
        assert node.busy
    for node in nodes:  # a CLOSING member takes the others' reports and answers nothing
        assert route(nodes, sent[node.public_key], deadline, node.public_key) == dict.fromkeys(
            keys, []
        )
    ended: dict[bytes, tuple[Abort, RoundAborted]] = {}
    for node in nodes:
        assert node.tick(deadline + grace - 1) == []
        (aborted,) = node.tick(deadline + grace)
        assert isinstance(aborted, RoundAborted) and aborted.stats.ended_ms == deadline + grace
        assert not node.busy
        ended[node.public_key] = (report_of(sent[node.public_key][0]), aborted)
    return ended


def test_a_contribution_is_spent_when_its_parts_go_out_not_at_the_roster():
    config = RoundConfig(max_group_size=3)
    nodes = make_nodes(3, config, seed=3)
    contribute(nodes, 10, 4)
    keys = [n.public_key for n in nodes]
    # Member 2's READYs are lost: the two others never send anything masked; member 2, which
    # got every READY it waits for (member 1's), sends its PARTs. The round times out.
    sent: list[tuple[bytes, Send]] = []
    route(
        nodes,
        nodes[0].start_round(keys[1:], START_MS),
        sent=sent,
        drop=lambda origin, send: origin == keys[2] and send.kind == "READY",
    )
    assert {origin for origin, send in sent if send.kind == "PART"} == {keys[2]}
    deadline = nodes[0].current_round[2]  # type: ignore[index]
    ended = time_out_together(nodes, deadline)
    # Each one reports whom it waits for: the initiator and member 1 for member 2's READY,
    # member 2 for the others' PARTs. Followed from report to report, each suspects both
    # others; nobody is struck.
    reports = {key: (abort.reason, abort.accused) for key, (abort, _) in ended.items()}
    assert reports == {
        keys[0]: ("timeout_running", (keys[2],)),
        keys[1]: ("timeout_running", (keys[2],)),
        keys[2]: ("timeout_running", (keys[0], keys[1])),
    }
    for node in nodes:
        _, aborted = ended[node.public_key]
        assert aborted.reason == "timeout_running" and aborted.blamed == ()
        assert set(aborted.suspects) == set(keys) - {node.public_key}
        assert node.backoff.snapshot(0) == {}  # two suspects each: nobody singled out
    # Only member 2's contribution is spent; the others may bring theirs to another round.
    assert [node.contribution_fresh for node in nodes] == [True, True, False]
    now = deadline + config.closing_grace_ms + 1
    nodes[2].set_contribution(np.ones(10, np.float32), 1, SCHEMA)
    sent.clear()
    # Every PART goes out, but a REDUCED is lost: the round aborts, and the contributions
    # are spent now, finished or not.
    actions = nodes[0].start_round(keys[1:], now)
    route(nodes, actions, now, sent=sent, drop=lambda origin, send: send.kind == "REDUCED")
    assert {origin for origin, send in sent if send.kind == "PART"} == set(keys)
    deadline = nodes[0].current_round[2]  # type: ignore[index]
    ended = time_out_together(nodes, deadline)
    for node in nodes:  # each waits for both others' REDUCED parts
        abort, aborted = ended[node.public_key]
        others = tuple(k for k in keys if k != node.public_key)
        assert abort.accused == others and aborted.suspects == others
    assert not any(node.contribution_fresh for node in nodes)
    with pytest.raises(RoundUsageError, match="contribution_spent"):
        nodes[0].start_round(keys[1:], deadline + config.closing_grace_ms + 1)


def test_closing_refuses_round_messages_and_ends_closing_grace_ms_after_it_began():
    config = RoundConfig(max_group_size=3)
    grace = config.closing_grace_ms
    nodes = make_nodes(3, config, seed=3)
    contribute(nodes, 10, 4)
    keys = [n.public_key for n in nodes]
    sent: list[tuple[bytes, Send]] = []
    route(
        nodes,
        nodes[0].start_round(keys[1:], START_MS),
        sent=sent,
        drop=lambda origin, send: origin == keys[2] and send.kind == "READY",
    )
    withheld = {send.to: send for origin, send in sent if send.kind == "READY"}
    group, _, deadline = nodes[0].current_round  # type: ignore[misc]
    # The initiator's deadline passes: it reports (it waits for member 2's READY) and enters
    # CLOSING, still in the group, until deadline + grace.
    initiator = nodes[0].tick(deadline)
    reports = [(a.to, report_of(a)) for a in initiator if isinstance(a, Send)]
    transcript = reports[0][1].transcript
    assert reports == [
        (keys[1], Abort(transcript, "timeout_running", accused=(keys[2],))),
        (keys[2], Abort(transcript, "timeout_running", accused=(keys[2],))),
    ]
    assert initiator[-1] == Wake(deadline + grace) and len(initiator) == 3
    assert nodes[0].current_round == (group, START_MS, deadline)
    # Member 2's READY, in flight all along, arrives now: refused, nobody's fault, and it
    # changes nothing (no answer, no strike, no outcome).
    late = withheld[keys[0]]
    refused = nodes[0].receive(late.frame, deadline + 3, from_peer=keys[2])
    assert refused == [MessageRefused("closing", keys[2], "READY")]
    assert nodes[0].current_round == (group, START_MS, deadline)
    assert nodes[0].backoff.snapshot(deadline + 3) == {}
    # Member 1, still running, hears the initiator's ABORT 10 ms later: it enters CLOSING
    # itself ("peer_aborted": the aborter, whom it waits for, and whom the aborter accused)
    # and ends closing_grace_ms after that, not after its deadline.
    member = nodes[1].receive(initiator[0].frame, deadline + 10, from_peer=keys[0])
    reports = [(a.to, report_of(a)) for a in member if isinstance(a, Send)]
    assert reports == [
        (keys[0], Abort(transcript, "peer_aborted", accused=(keys[0], keys[2]))),
        (keys[2], Abort(transcript, "peer_aborted", accused=(keys[0], keys[2]))),
    ]
    assert member[-1] == Wake(deadline + 10 + grace) and len(member) == 3
    # Its report reaches the initiator: taken, no answer. Member 2's READY reaches member 1
    # now: refused as well.
    assert nodes[0].receive(member[0].frame, deadline + 20, from_peer=keys[1]) == []
    refused = nodes[1].receive(withheld[keys[1]].frame, deadline + 20, from_peer=keys[2])
    assert refused == [MessageRefused("closing", keys[2], "READY")]
    # Each ends exactly grace after it entered CLOSING, not a millisecond earlier.
    assert nodes[0].tick(deadline + grace - 1) == []
    ended, singled = nodes[0].tick(deadline + grace)
    assert isinstance(ended, RoundAborted) and ended.stats.ended_ms == deadline + grace
    # The initiator's suspects start at member 2, whose report never came: member 2 alone,
    # which group testing singles out (and strikes) at once.
    assert (ended.reason, ended.blamed, ended.suspects) == ("timeout_running", (), (keys[2],))
    assert singled == PeerSuspected((keys[2],), 1)
    assert list(nodes[0].backoff.snapshot(deadline + grace)) == [keys[2]]
    assert not nodes[0].busy
    assert nodes[1].tick(deadline + 10 + grace - 1) == []
    (ended,) = nodes[1].tick(deadline + 10 + grace)
    assert isinstance(ended, RoundAborted) and ended.stats.ended_ms == deadline + 10 + grace
    # Member 1's start: the aborter and member 2 (the aborter's reason was a timeout); the
    # initiator's report (member 2) adds nobody.
    assert (ended.reason, ended.blamed, ended.suspects) == ("peer_aborted", (), (keys[0], keys[2]))
    assert not nodes[1].busy


def test_next_deadline_in_closing_is_when_closing_ends():
    # The daemon's engine (peer/net/engine.py) ignores Wake: it sleeps until next_deadline()
    # and then ticks. In CLOSING that must be when CLOSING ends, or the engine spins on
    # tick() (a deadline in the past) or ends the round late (a later one).
    config = RoundConfig(max_group_size=3)
    grace = config.closing_grace_ms
    nodes = make_nodes(3, config, seed=3)
    contribute(nodes, 10, 4)
    keys = [n.public_key for n in nodes]
    route(
        nodes,
        nodes[0].start_round(keys[1:], START_MS),
        drop=lambda origin, send: origin == keys[2] and send.kind == "READY",
    )
    deadline = nodes[0].current_round[2]  # type: ignore[index]
    # A member still waiting for READYs asks to be ticked at once, to encode and mask its
    # vector's shards meanwhile (route ticked it); once it has, its next deadline is the
    # round's.
    for node in nodes:
        assert [a for a in node.tick(START_MS) if not isinstance(a, Wake)] == []
    assert [n.next_deadline() for n in nodes] == [deadline] * 3  # RUNNING: the deadline
    # Member 2 stops (its driver aborts the round) 2 s before the deadline: the two others
    # hear its ABORT at once and enter CLOSING until 1 s later.
    heard = deadline - 2_000
    stopping = [a for a in nodes[2].abort("peer_stopping", heard) if isinstance(a, Send)]
    for node in nodes[:2]:
        (abort,) = [a for a in stopping if a.to == node.public_key]
        assert node.receive(abort.frame, heard, from_peer=keys[2])[-1] == Wake(heard + grace)
    found = {"initiator": nodes[0].next_deadline(), "member": nodes[1].next_deadline()}
    expected = {"initiator": heard + grace, "member": heard + grace}
    # (Found at a00148b, fixed in 54d4087: next_deadline returned min(invite_deadline_ms,
    # deadline_ms) whatever the phase.)
    assert found == expected, (
        "regression of the fix in 54d4087 (Node.next_deadline in Phase.CLOSING must be "
        "closing_until_ms): a CLOSING member's next deadline is "
        f"{ {k: v - expected[k] for k, v in found.items()} } ms off closing_until_ms"
    )
    # Once CLOSING ends, no round: nothing to wake for.
    for node in nodes[:2]:
        node.tick(heard + grace)
        assert node.next_deadline() is None


def test_a_group_of_two_is_impossible():
    nodes = make_nodes(3, RoundConfig(max_group_size=3))
    contribute(nodes, 10, 0)
    with pytest.raises(RoundUsageError):
        nodes[0].start_round([nodes[1].public_key], START_MS)
    # Three invited, one declines: the initiator cancels rather than run a pair.
    nodes[2]._contribution = None  # not ready: answers BUSY
    outcomes = route(nodes, nodes[0].start_round([n.public_key for n in nodes[1:]], START_MS))
    assert [type(o) for o in outcomes[nodes[0].public_key]] == [RoundCancelled]
    assert [type(o) for o in outcomes[nodes[1].public_key]] == [RoundCancelled]
    assert not any(node.busy for node in nodes)


def test_a_busy_peer_answers_busy_and_stays_in_its_group():
    config = RoundConfig(max_group_size=3)
    nodes = make_nodes(5, config)
    contribute(nodes, 10, 0)
    first = nodes[0].start_round([nodes[1].public_key, nodes[2].public_key], START_MS)
    # Node 1 takes the first invitation, then gets a second one directly.
    accept = nodes[1].receive(first[0].frame, START_MS, from_peer=nodes[0].public_key)
    assert nodes[1].busy and accept[0].kind == "ACCEPT"
    second = nodes[3].start_round([nodes[1].public_key, nodes[4].public_key], START_MS)
    invite_to_1 = next(a for a in second if isinstance(a, Send) and a.to == nodes[1].public_key)
    reply = nodes[1].receive(invite_to_1.frame, START_MS, from_peer=nodes[3].public_key)
    assert [a.kind for a in reply] == ["BUSY"]
    assert nodes[1].current_group == nodes[0].current_group


def test_schema_or_parameter_mismatch_answers_busy():
    nodes = make_nodes(3, RoundConfig(max_group_size=3))
    contribute(nodes, 10, 0)
    nodes[1].set_contribution(np.zeros(11, np.float32), 1, SCHEMA)  # other length
    invites = nodes[0].start_round([nodes[1].public_key, nodes[2].public_key], START_MS)
    reply = nodes[1].receive(invites[0].frame, START_MS, from_peer=nodes[0].public_key)
    assert [a.kind for a in reply] == ["BUSY"] and not nodes[1].busy


def test_invite_not_naming_me_or_not_from_its_initiator_is_refused():
    nodes = make_nodes(4, RoundConfig(max_group_size=3))
    contribute(nodes, 10, 0)
    invites = nodes[0].start_round([nodes[1].public_key, nodes[2].public_key], START_MS)
    # An invitation addressed to node 1 cannot be replayed at node 3 (recipient check).
    refused = nodes[3].receive(invites[0].frame, START_MS, from_peer=nodes[0].public_key)
    assert isinstance(refused[0], MessageRefused) and refused[0].reason == "recipient"
    # A frame delivered by a peer other than its signer is refused.
    refused = nodes[1].receive(invites[0].frame, START_MS, from_peer=nodes[2].public_key)
    assert refused[0].reason == "sender_mismatch" and not nodes[1].busy


def test_rounds_replay_exactly_with_the_same_seed():
    def run() -> list[bytes]:
        nodes = make_nodes(4, RoundConfig(max_group_size=4), seed=7)
        contribute(nodes, 300, 7)
        actions = nodes[0].start_round([x.public_key for x in nodes[1:]], START_MS)
        outcomes = route(nodes, actions)
        return [outcomes[n.public_key][0].average.tobytes() for n in nodes] + [
            outcomes[nodes[0].public_key][0].group
        ]

    assert run() == run()


def test_timeout_aborts_and_clears_state():
    nodes = make_nodes(
        3, RoundConfig(max_group_size=3, invite_timeout_ms=100, round_timeout_ms=1000)
    )
    contribute(nodes, 10, 0)
    nodes[0].start_round([nodes[1].public_key, nodes[2].public_key], START_MS)
    assert nodes[0].next_deadline() == START_MS + 100
    # Nobody answers: at the invite deadline the initiator cancels (too few accepted).
    outcome = nodes[0].tick(START_MS + 100)
    assert isinstance(outcome[-1], RoundCancelled) and not nodes[0].busy


def test_part_bounds_cover_the_vector_contiguously():
    for length in (0, 1, 7, 100):
        for parts in (3, 4, 8):
            bounds = part_bounds(length, parts)
            assert bounds[0][0] == 0 and bounds[-1][1] == length
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))


def test_config_refuses_groups_outside_3_to_16():
    for k in (2, 17):
        with pytest.raises(ValueError):
            RoundConfig(max_group_size=k)


def test_current_round_names_the_group_while_it_runs():
    config = RoundConfig(max_group_size=3)
    nodes = make_nodes(3, config)
    contribute(nodes, 10, 0)
    assert [n.current_round for n in nodes] == [None] * 3
    actions = nodes[0].start_round([n.public_key for n in nodes[1:]], START_MS)
    group = nodes[0].current_group
    assert group is not None
    deadline = START_MS + nodes[0].round_budget_ms(10)
    assert deadline < START_MS + config.round_timeout_ms  # scaled to the (tiny) backbone
    assert nodes[0].current_round == (group, START_MS, deadline)
    # A member joins later: its own start, the invitation's deadline.
    invite = next(a for a in actions if isinstance(a, Send) and a.to == nodes[1].public_key)
    rest = [a for a in actions if a is not invite]
    reply = nodes[1].receive(invite.frame, START_MS + 5, from_peer=nodes[0].public_key)
    assert nodes[1].current_round == (group, START_MS + 5, deadline)
    route(nodes, rest)
    assert nodes[2].current_round == (group, START_MS, deadline)  # accepted, awaits the roster
    outcomes = route(nodes, reply, first=nodes[1].public_key)
    assert [[type(o) for o in outcomes[n.public_key]] for n in nodes] == [[RoundFinished]] * 3
    assert [n.current_round for n in nodes] == [None] * 3
    # An aborted round leaves nothing either (after new contributions: the old ones are spent).
    contribute(nodes, 10, 1)
    nodes[0].start_round([n.public_key for n in nodes[1:]], START_MS + 10)
    assert nodes[0].current_round is not None
    nodes[0].tick(START_MS + 10 + nodes[0].round_budget_ms(10))
    assert nodes[0].current_round is None


@pytest.mark.parametrize(
    ("frac_bits", "limit"),
    [(20, 0.0), (20, -1.0), (20, float("nan")), (20, float("inf")), (20, 2048.0), (26, 64.0)],
)
def test_config_refuses_a_max_abs_average_the_check_cannot_use(frac_bits, limit):
    with pytest.raises(ValueError, match="max_abs_average"):
        RoundConfig(frac_bits=frac_bits, max_abs_average=limit)


def test_config_accepts_a_max_abs_average_below_the_rings_range():
    assert RoundConfig().max_abs_average == 64.0
    assert RoundConfig(max_abs_average=2047.5).max_abs_average == 2047.5
    assert RoundConfig(frac_bits=16, max_abs_average=30_000.0).max_abs_average == 30_000.0


def test_an_invite_of_another_protocol_version_is_refused_and_never_answered():
    # Round v2 answered a v1 INVITE with a signed BUSY before checking any signature: a junk
    # frame marked version 1 got a signed frame back. Now nothing signed answers an
    # unverified frame: refused ("version"), counted, and the driver logs the version.
    import msgpack

    nodes = make_nodes(3, RoundConfig(max_group_size=3))
    old, me = nodes[0].identity, nodes[1]
    for version in (1, 2):
        fields = {
            "v": version,
            "type": "INVITE",
            "sender": old.public_key,
            "recipient": me.public_key,
            "group": bytes([version]) * 16,
            "seq": version,
            "ts": START_MS,
            "body": {
                "members": [old.public_key, me.public_key, nodes[2].public_key],
                "schema_hash": SCHEMA,
                "length": 10,
                "frac_bits": 20,
                "max_weight": 1,
                "deadline_ms": START_MS + 10_000,
            },
        }
        signed = msgpack.packb(fields, use_bin_type=True)
        frame = msgpack.packb({**fields, "sig": b"\0" * 64}, use_bin_type=True)  # not even signed
        actions = me.receive(frame, START_MS, from_peer=old.public_key)
        assert [(type(a), getattr(a, "reason", "")) for a in actions] == [
            (MessageRefused, "version")
        ]
        frame = msgpack.packb({**fields, "sig": old.sign(signed)}, use_bin_type=True)
        actions = me.receive(frame, START_MS, from_peer=old.public_key)
        assert [type(a) for a in actions] == [MessageRefused]
        assert not me.busy
