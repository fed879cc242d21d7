"""The DHT through the C API on loopback: real sockets, real threads, one process."""
import concurrent.futures
import random
import time

import pytest

import dnatransport as dna
from dnatransport import DNAError, ErrorCode


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    """30 nodes on 127.0.0.1, each with its own data dir, joined through node 0."""
    root = tmp_path_factory.mktemp("dht")
    nodes = [dna.DHT(data_dir=root / f"node{i}", bind_ip="127.0.0.1") for i in range(30)]
    seed = f"127.0.0.1:{nodes[0].port}"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda node: node.bootstrap([seed]), nodes[1:]))
    for node in nodes:  # a second pass fills the tables of the early joiners
        node.refresh()
    yield nodes
    for node in nodes:
        node.close()


def test_every_identity_is_found_from_every_node(network):
    rng = random.Random(4)
    announced = {}
    for i in range(100):
        node = rng.choice(network)
        name = f"user{i}"
        node.announce(name, "192.0.2.10", 10000 + i)
        announced[name] = ("192.0.2.10", 10000 + i)

    def find_all(node):
        return [(name, node.find_peer(name)) for name in announced]

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        results = list(pool.map(find_all, network))
    elapsed = time.monotonic() - start
    found = sum(1 for per_node in results for name, where in per_node if where == announced[name])
    print(f"30 nodes on loopback: {found}/3000 lookups found in {elapsed:.1f} s")
    assert found == 3000
    stats = network[5].stats
    assert stats["routing_table_size"] >= 20 and stats["received"] > 0 and stats["dropped"] == 0


def test_find_peer_entry_is_verified_and_unknown_is_not_found(network):
    network[3].announce("carol", "2001:db8::7", 4567)
    entry = network[17].find_peer_entry("carol")
    assert (entry.identity, entry.ip_address, entry.port) == ("carol", "2001:db8::7", 4567)
    entry.verify()  # the library's own check, and the signature is the identity's
    assert abs(entry.last_seen - time.time()) < 60
    with pytest.raises(DNAError) as caught:
        network[9].find_peer("nobody-has-this-name")
    assert caught.value.code == ErrorCode.NOT_FOUND


def test_a_newer_announcement_wins(network):
    network[2].announce("dave", "192.0.2.1", 1111)
    time.sleep(1.1)  # last_seen has one-second resolution
    network[2].announce("dave", "192.0.2.2", 2222)
    assert network[20].find_peer("dave") == ("192.0.2.2", 2222)


def test_arguments_are_checked(network, tmp_path):
    node = network[1]
    for bad in ((""), ("x" * 256)):
        with pytest.raises(DNAError) as caught:
            node.find_peer(bad)
        assert caught.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(DNAError) as caught:
        node.announce("erin", "not-an-address", 1)
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(DNAError) as caught:
        node.announce("erin", "192.0.2.1", 0)
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(DNAError) as caught:
        node.bootstrap(["no-port-here"])
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(DNAError) as caught:
        dna.DHT(data_dir=tmp_path, bind_ip="999.1.1.1")
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT


def test_bootstrap_to_nobody_is_unreachable(tmp_path, silent_port):
    with dna.DHT(data_dir=tmp_path, bind_ip="127.0.0.1") as lonely:
        start = time.monotonic()
        with pytest.raises(DNAError) as caught:
            lonely.bootstrap([f"127.0.0.1:{silent_port}"])
        assert caught.value.code == ErrorCode.UNREACHABLE
        assert time.monotonic() - start < 40


def test_node_id_and_table_survive_a_restart(tmp_path, network):
    directory = tmp_path / "restart"
    first = dna.DHT(data_dir=directory, bind_ip="127.0.0.1")
    first.bootstrap([f"127.0.0.1:{network[0].port}"])
    size = first.stats["routing_table_size"]
    first.close()
    node_file = (directory / "dht" / "node").read_bytes()
    again = dna.DHT(data_dir=directory, bind_ip="127.0.0.1")
    try:
        assert (directory / "dht" / "node").read_bytes() == node_file
        assert again.stats["routing_table_size"] >= min(size, 20)  # restored before any bootstrap
        assert again.find_peer("user1")[1] == 10001  # and it can look up at once
    finally:
        again.close()
