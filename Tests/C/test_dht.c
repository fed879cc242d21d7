/* The DHT context through the C ABI: two nodes on loopback. */
#define _POSIX_C_SOURCE 200809L
#include <dnatransport.h>
#include <stdio.h>
#include <unistd.h>
#include "check.h"

int main(void) {
    char dir_a[64], dir_b[64], seed[64], ip[46], command[160];
    const char *nodes[2], *none[1] = {NULL}, *bad[2] = {"nowhere", NULL};
    dht_config_t config;
    dht_context_t *a, *b;
    dht_peer_entry_t entry;
    dht_stats_t stats;
    uint16_t port = 0;
    int a_port;

    strcpy(dir_a, "/tmp/dna-c-dht-a-XXXXXX");
    strcpy(dir_b, "/tmp/dna-c-dht-b-XXXXXX");
    if (!mkdtemp(dir_a) || !mkdtemp(dir_b)) return 2;

    memset(&config, 0, sizeof config);
    config.bind_ip = "127.0.0.1";
    config.data_dir = dir_a;
    a = dht_init(&config);
    config.data_dir = dir_b;
    b = dht_init(&config);
    CHECK(a != NULL && b != NULL);
    a_port = dht_get_port(a);
    CHECK(a_port > 0 && a_port < 65536);
    CHECK(dht_get_port(b) > 0 && dht_get_port(b) != a_port);

    snprintf(seed, sizeof seed, "127.0.0.1:%d", a_port);
    nodes[0] = seed;
    nodes[1] = NULL;
    CHECK_EQ_INT(dht_bootstrap(b, nodes), DNA_OK);
    CHECK_EQ_INT(dht_announce(a, "alice", "192.0.2.5", 4567), DNA_OK);
    CHECK_EQ_INT(dht_find_peer(b, "alice", ip, &port), DNA_OK);
    CHECK(strcmp(ip, "192.0.2.5") == 0 && port == 4567);
    CHECK_EQ_INT(dht_find_peer_entry(b, "alice", &entry), DNA_OK);
    CHECK(strcmp(entry.identity, "alice") == 0 && entry.port == 4567);
    CHECK_EQ_INT(dht_peer_entry_verify(&entry), DNA_OK);
    CHECK_EQ_INT(dht_find_peer(b, "bob", ip, &port), DNA_ERR_NOT_FOUND);
    CHECK_EQ_INT(dht_refresh(a), DNA_OK);
    CHECK_EQ_INT(dht_get_stats(b, &stats), DNA_OK);
    CHECK(stats.routing_table_size == 1 && stats.stored_entries == 1 && stats.received > 0 && stats.sent > 0);
    CHECK(stats.refused_contacts == 0 && stats.refused_pieces == 0);
    /* A bootstrap list of addresses no node can have is refused (0.0.0.0, broadcast): nothing is sent there. */
    {
        const char *unreachable[] = {"0.0.0.0:4567", "255.255.255.255:4567", NULL};
        CHECK_EQ_INT(dht_bootstrap(b, unreachable), DNA_ERR_INVALID_ARGUMENT);
    }

    /* Arguments. */
    CHECK_EQ_INT(dht_bootstrap(b, none), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(dht_bootstrap(b, bad), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(dht_bootstrap(NULL, nodes), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(dht_announce(a, "alice", "example.org", 1), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(dht_announce(a, "alice", "192.0.2.5", 0), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(dht_find_peer(b, "alice", NULL, &port), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(dht_find_peer_entry(b, "alice", NULL), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(dht_get_stats(b, NULL), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(dht_get_port(NULL), DNA_ERR_INVALID_ARGUMENT);
    config.bind_ip = "not an address";
    CHECK(dht_init(&config) == NULL);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_INVALID_ARGUMENT);

    dht_free(b);
    dht_free(a);
    dht_free(NULL);
    CHECK_EQ_INT(dht_refresh(a), DNA_ERR_INVALID_ARGUMENT); /* a freed context is refused, not used */
    snprintf(command, sizeof command, "rm -rf %s %s", dir_a, dir_b);
    if (system(command) != 0) fprintf(stderr, "could not remove the test directories\n");
    return check_report("test_dht");
}
