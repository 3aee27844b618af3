"""Peer daemons across a WAN: `gossiplearn run` processes, each in its own network namespace of
the lab (gossiplearn/testing/netlab.py), with 150 ms round trips, 20 Mbit/s access links and
1% packet loss on every path.

- Six peers complete at least five rounds each, none aborted, and learn exactly what the same
  six learn on 127.0.0.1. For the comparison to mean anything, the run is made repeatable:
  one peer invites and groups hold all six (so every round averages the same contributions
  whatever the network), and the others are up before it starts. One of the six dials nobody
  and announces only its /dns4/ name: the others reach it through the lab's DNS.
- Two peers that accept no connections (a firewall drops every connection attempt to them)
  hold reservations on a third peer's relay: they dial the others themselves, and reach each
  other only through the relay. Rounds holding both complete, none aborted for a reason other
  than its deadline (wall time, which a loaded machine can pass), and each one's status says
  how it reaches every neighbour.

Needs root and ``ip netns``; skipped with one line otherwise.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from gossiplearn.protocol.events import ABORT_REASONS
from gossiplearn.testing import wan
from gossiplearn.testing.netlab import Link, NetLab, unavailable_reason, uniform

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

RTT_MS, MBIT, LOSS = 150.0, 20.0, 0.01
PEERS = 6
ROUNDS = 5
NAMED = 1  # the peer the others know by its DNS name only
NAME = "org-1.lab"
BUDGET_S = 420.0

REASON = unavailable_reason()


@pytest.fixture(autouse=True)
def lab_available() -> None:
    if REASON is not None:
        pytest.skip(f"network lab unavailable: {REASON}")


def repeatable_run(work: Path, lab: NetLab | None) -> list[dict[str, Any]]:
    """Six daemons; peer 0 alone invites, into groups of all six, once the others are up."""
    plans: dict[int, wan.PeerPlan] = {}
    if lab is not None:
        plans = {i: wan.PeerPlan(names={NAMED: NAME}) for i in range(PEERS) if i != NAMED}
        plans[NAMED] = wan.PeerPlan(announce=[f"/dns4/{NAME}/tcp/{wan.LAB_PORT}"], quiet=True)
    dirs = wan.prepare(
        work, PEERS, lab=lab, interval_s=4.0, group_size=PEERS, initiators=[0], plans=plans
    )
    with wan.Cluster(dirs, lab, start=False) as cluster:
        cluster.start_after(range(1, PEERS))
        documents = cluster.wait(
            lambda docs: min(wan.rounds_done(d) for d in docs) >= ROUNDS,
            BUDGET_S,
            f"every peer to complete {ROUNDS} rounds",
        )
        if lab is not None:
            documents[0]["lab_dns"] = lab.forwarder_stats()["dns"]  # type: ignore[index]
    return [d for d in documents if d is not None]


#: What a round aborts for when a machine is slow: its deadlines, a dial's (the transport
#: could not reach a member in time), and the ABORTs the others then send.
SLOW_MACHINE_ABORTS = {
    "timeout_running",
    "timeout_await_roster",
    "timeout_inviting",
    "initiator_unreachable",
    "member_unreachable",
    "peer_aborted",
}


def aborts(documents: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for document in documents:
        for reason, count in document["rounds"]["abort_reasons"].items():
            total[reason] = total.get(reason, 0) + count
    return total


def test_six_peers_across_a_wan_learn_what_they_learn_on_loopback(tmp_path: Path) -> None:
    loopback = repeatable_run(tmp_path / "loopback", None)
    with NetLab(uniform(PEERS, RTT_MS, MBIT, LOSS), names={NAME: NAMED}, seed=1) as lab:
        across = repeatable_run(tmp_path / "wan", lab)
    for documents in (loopback, across):
        assert all(wan.rounds_done(d) >= ROUNDS for d in documents)
        assert aborts(documents) == {}
        # No timeout of the network side either: handshakes, bulk channel connections.
        assert all(not d["inbound_refused"] and not d["bulk_refused"] for d in documents)
        # Every round held all six: the runs averaged the same contributions.
        assert all(
            len(entry["members"]) == PEERS
            for d in documents
            for entry in d["rounds"]["history"][:ROUNDS]
        )
    wan_accuracy = [wan.accuracy_after(d, ROUNDS) for d in across]
    loopback_accuracy = [wan.accuracy_after(d, ROUNDS) for d in loopback]
    mean_wan = statistics.mean(a for a in wan_accuracy if a is not None)
    mean_loopback = statistics.mean(a for a in loopback_accuracy if a is not None)
    seconds = {
        name: statistics.median(h["seconds"] for d in docs for h in d["rounds"]["history"])
        for name, docs in (("loopback", loopback), ("wan", across))
    }
    print(
        f"accuracy after {ROUNDS} rounds: {mean_wan:.4f} across the WAN, {mean_loopback:.4f} "
        f"on loopback; median round {seconds['wan']:.2f} s vs {seconds['loopback']:.2f} s"
    )
    assert abs(mean_wan - mean_loopback) <= 0.01
    # Reached by name: the others dialed it at /dns4/ (it dialed nobody), through the lab's DNS.
    named = next(n for n in across[0]["neighbours"] if n["peer_id"] == across[NAMED]["peer_id"])
    assert named["addrs"][0].startswith(f"/dns4/{NAME}/") and named["live"]
    assert named["reached"] == "direct"
    assert across[0]["lab_dns"].get(NAME, 0) >= 1
    assert across[NAMED]["addrs"] == [
        f"/dns4/{NAME}/tcp/{wan.LAB_PORT}/p2p/{across[NAMED]['peer_id']}"
    ]


RELAY, OPEN, FIREWALLED = 0, (1, 2), (3, 4)


def test_peers_that_accept_no_connections_join_through_a_relay(tmp_path: Path) -> None:
    links = uniform(5, RTT_MS, MBIT, LOSS)
    for i in FIREWALLED:
        links[i] = Link(links[i].mbit, links[i].delay_ms, links[i].loss, inbound=False)
    hidden = wan.PeerPlan(relays=[RELAY], dialable=False)
    plans = {RELAY: wan.PeerPlan(relay_service=True), **{i: hidden for i in FIREWALLED}}
    with NetLab(links, seed=2) as lab:
        dirs = wan.prepare(tmp_path, 5, lab=lab, interval_s=2.0, plans=plans)
        with wan.Cluster(dirs, lab) as cluster:

            def done(docs: list[dict[str, Any] | None]) -> bool:
                together = [
                    entry
                    for entry in (docs[FIREWALLED[0]] or {}).get("rounds", {}).get("history", [])
                    if docs[FIREWALLED[1]] is not None
                    and docs[FIREWALLED[1]]["peer_id"] in entry["members"]
                ]
                return min(wan.rounds_done(d) for d in docs) >= ROUNDS and len(together) >= 1

            documents = [d for d in cluster.wait(done, BUDGET_S, "rounds through the relay") if d]
        refused = lab.forwarder_stats()["paths"]
    # No round failed for a reason of the protocol's. A round's deadline is wall time
    # (invite timeout + 3 s for this model), and so is a dial's: beside a load of 14 a few of
    # these 2 s-interval rounds passed it (4 in one run), at load 20-27 a dial through the relay
    # timed out (member_unreachable; the other members then abort as peer_aborted, and the
    # first one's own reason is counted too). That says nothing about relays: the rounds the
    # firewalled peers finished together through the relay (above) do.
    assert set(ABORT_REASONS) >= SLOW_MACHINE_ABORTS  # names the registry knows
    assert set(aborts(documents)) <= SLOW_MACHINE_ABORTS
    assert all(not d["inbound_refused"] and not d["bulk_refused"] for d in documents)
    ids = [d["peer_id"] for d in documents]
    for i in FIREWALLED:
        reached = {n["peer_id"]: n["reached"] for n in documents[i]["neighbours"]}
        other = FIREWALLED[1] if i == FIREWALLED[0] else FIREWALLED[0]
        assert reached[ids[other]] == "relayed"
        assert all(reached[ids[j]] == "direct" for j in (RELAY, *OPEN))
        relay_status = documents[i]["relay"]["reservations"][0]
        assert relay_status["held"]
        # It announces only its circuit address through the relay.
        assert all("/p2p-circuit/" in address for address in documents[i]["addrs"])
    served = documents[RELAY]["relay"]["service"]
    assert served["reservations"] == 2 and served["circuits_opened"] >= 1
    # Nobody connected to them directly: no connection attempt even reached their firewalls'
    # drop (they are known by peer id and circuit address only)...
    assert all(refused.get(f"{j}>{i}", [0, 0, 0, 0])[3] == 0 for i in FIREWALLED for j in range(5))
    # ...and their traffic to each other went through the relay, never directly.
    assert f"{FIREWALLED[0]}>{FIREWALLED[1]}" not in refused
    assert f"{FIREWALLED[1]}>{FIREWALLED[0]}" not in refused
