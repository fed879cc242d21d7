/* The transport through the C ABI: a DHT context as bootstrap node and two transport contexts on
   loopback; alice connects to bob by name, messages both ways on two streams, the readiness fd,
   presence, a clean disconnect, transport_init from the DNA_* environment; every argument check. */
#define _POSIX_C_SOURCE 200809L
#include <dnatransport.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "check.h"

static int readable(int fd, int timeout_ms) {
    struct pollfd p;
    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;
    return poll(&p, 1, timeout_ms) == 1;
}

int main(void) {
    char dir_boot[] = "/tmp/dna-ctr-boot-XXXXXX", dir_a[] = "/tmp/dna-ctr-a-XXXXXX", dir_b[] = "/tmp/dna-ctr-b-XXXXXX";
    char dir_c[] = "/tmp/dna-ctr-c-XXXXXX", dir_f[] = "/tmp/dna-ctr-f-XXXXXX";
    char bootstrap[64], name[TRANSPORT_IDENTITY_MAX + 1], small[3];
    const char *nodes[2];
    dht_config_t dht_config;
    transport_config_t config;
    dht_context_t *boot;
    transport_context_t *alice, *bob, *carol, *frank;
    int alice_id = 0, bob_id = 0, other = 0, fd, status = -1, i;
    uint8_t *data = NULL, big[200000];
    size_t len = 0;
    uint32_t stream = 99;
    uint64_t sent_at = 0;

    if (!mkdtemp(dir_boot) || !mkdtemp(dir_a) || !mkdtemp(dir_b) || !mkdtemp(dir_c) || !mkdtemp(dir_f)) return 2;
    memset(&dht_config, 0, sizeof dht_config);
    dht_config.bind_ip = "127.0.0.1";
    dht_config.data_dir = dir_boot;
    boot = dht_init(&dht_config);
    CHECK(boot != NULL);
    if (!boot) return check_report("test_transport");
    snprintf(bootstrap, sizeof bootstrap, "127.0.0.1:%d", dht_get_port(boot));
    nodes[0] = bootstrap;
    nodes[1] = NULL;

    memset(&config, 0, sizeof config);
    config.bootstrap_nodes = nodes;
    config.bind_ip = "127.0.0.1";
    config.data_dir = dir_a;
    alice = transport_init_with_config("alice", &config);
    config.data_dir = dir_b;
    bob = transport_init_with_config("bob", &config);
    CHECK(alice != NULL && bob != NULL);
    if (!alice || !bob) return check_report("test_transport");

    fd = transport_get_fd(bob);
    CHECK(fd >= 0);
    CHECK(!readable(fd, 0));
    CHECK_EQ_INT(transport_accept(bob, &bob_id, name, sizeof name, 0), DNA_ERR_TIMEOUT);

    /* Connect by name; bob's fd turns readable for the incoming connection. */
    CHECK_EQ_INT(transport_connect(alice, "bob", &alice_id), DNA_OK);
    CHECK(alice_id > 0);
    CHECK(readable(fd, 10000));
    CHECK_EQ_INT(transport_accept(bob, &bob_id, small, sizeof small, 0), DNA_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ_INT(transport_accept(bob, &bob_id, name, sizeof name, 5000), DNA_OK);
    CHECK(strcmp(name, "alice") == 0);
    CHECK(!readable(fd, 0));

    /* Messages: stream 0 through the seed's calls, a large one on stream 5 that does not hold back
       a small one on stream 1. */
    for (i = 0; i < (int)sizeof big; i++) big[i] = (uint8_t)(i * 31);
    CHECK_EQ_INT(transport_send(alice, alice_id, (const uint8_t *)"hello bob", 9), DNA_OK);
    CHECK_EQ_INT(transport_send_stream(alice, alice_id, 5, big, sizeof big), DNA_OK);
    CHECK_EQ_INT(transport_send_stream(alice, alice_id, 1, (const uint8_t *)"small", 5), DNA_OK);
    CHECK_EQ_INT(transport_send(alice, alice_id, NULL, 0), DNA_OK);
    CHECK(readable(fd, 10000));
    CHECK_EQ_INT(transport_receive(bob, bob_id, &data, &len, 5000), DNA_OK);
    CHECK(len == 9 && data && memcmp(data, "hello bob", 9) == 0);
    dna_buffer_free(data);
    for (i = 0; i < 3; i++) {
        data = NULL;
        CHECK_EQ_INT(transport_receive_stream(bob, bob_id, &stream, &data, &len, 5000), DNA_OK);
        if (stream == 5) CHECK(len == sizeof big && data && memcmp(data, big, sizeof big) == 0);
        else if (stream == 1) CHECK(len == 5 && data && memcmp(data, "small", 5) == 0);
        else CHECK(stream == 0 && len == 0 && data == NULL);
        dna_buffer_free(data);
    }
    CHECK(!readable(fd, 0));
    CHECK_EQ_INT(transport_receive(bob, bob_id, &data, &len, 0), DNA_ERR_TIMEOUT);

    CHECK_EQ_INT(transport_send(bob, bob_id, (const uint8_t *)"hi alice", 8), DNA_OK);
    CHECK_EQ_INT(transport_receive(alice, alice_id, &data, &len, 5000), DNA_OK);
    CHECK(len == 8 && data && memcmp(data, "hi alice", 8) == 0);
    dna_buffer_free(data);

    /* Into the caller's buffer: too small leaves the message queued and says its length. */
    {
        uint8_t into[64], tiny[4];
        CHECK_EQ_INT(transport_send_stream(bob, bob_id, 7, big, 40), DNA_OK);
        len = 0;
        CHECK_EQ_INT(transport_receive_into(alice, alice_id, &stream, tiny, sizeof tiny, &len, 5000), DNA_ERR_BUFFER_TOO_SMALL);
        CHECK(len == 40);
        len = 0;
        stream = 0;
        CHECK_EQ_INT(transport_receive_into(alice, alice_id, &stream, into, sizeof into, &len, 5000), DNA_OK);
        CHECK(len == 40 && stream == 7 && memcmp(into, big, 40) == 0);
        CHECK_EQ_INT(transport_receive_into(alice, alice_id, NULL, into, sizeof into, &len, 0), DNA_ERR_TIMEOUT);
        CHECK_EQ_INT(transport_receive_into(alice, alice_id, NULL, NULL, 8, &len, 0), DNA_ERR_INVALID_ARGUMENT);
        CHECK_EQ_INT(transport_receive_into(alice, alice_id, NULL, into, sizeof into, NULL, 0), DNA_ERR_INVALID_ARGUMENT);
        CHECK_EQ_INT(transport_receive_into(alice, -1, NULL, into, sizeof into, &len, 0), DNA_ERR_NOT_FOUND);
    }

    /* Presence. */
    CHECK_EQ_INT(transport_get_presence(alice, alice_id, &status), DNA_OK);
    CHECK_EQ_INT(status, TRANSPORT_PRESENCE_ONLINE);
    CHECK_EQ_INT(transport_set_presence(bob, TRANSPORT_PRESENCE_BUSY), DNA_OK);
    for (i = 0; i < 200 && status != TRANSPORT_PRESENCE_BUSY; i++) {
        struct timespec pause;
        pause.tv_sec = 0;
        pause.tv_nsec = 10000000;
        nanosleep(&pause, NULL);
        CHECK_EQ_INT(transport_get_presence(alice, alice_id, &status), DNA_OK);
    }
    CHECK_EQ_INT(status, TRANSPORT_PRESENCE_BUSY);

    /* Argument checks. */
    CHECK(transport_init(NULL) == NULL);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_INVALID_ARGUMENT);
    CHECK(transport_init("") == NULL);
    CHECK_EQ_INT(transport_connect(NULL, "bob", &other), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_connect(alice, NULL, &other), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_connect(alice, "bob", NULL), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_connect(alice, "alice", &other), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_connect(alice, "nobody-announced-this", &other), DNA_ERR_PEER_OFFLINE);
    CHECK_EQ_INT(transport_accept(NULL, &other, name, sizeof name, 0), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_accept(bob, NULL, name, sizeof name, 0), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_accept(bob, &other, NULL, sizeof name, 0), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_accept(bob, &other, name, 0, 0), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_send(NULL, alice_id, (const uint8_t *)"x", 1), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_send(alice, alice_id, NULL, 1), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_send(alice, 9999, (const uint8_t *)"x", 1), DNA_ERR_NOT_FOUND);
    CHECK_EQ_INT(transport_send(alice, alice_id, big, (size_t)-1), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_receive(alice, alice_id, NULL, &len, 0), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_receive(alice, alice_id, &data, NULL, 0), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_receive(alice, -1, &data, &len, 0), DNA_ERR_NOT_FOUND);
    CHECK_EQ_INT(transport_receive_stream(alice, alice_id, NULL, &data, &len, 0), DNA_ERR_TIMEOUT);
    CHECK_EQ_INT(transport_get_fd(NULL), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_set_presence(bob, 4), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_set_presence(bob, -1), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_get_presence(alice, alice_id, NULL), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_get_presence(alice, 9999, &status), DNA_ERR_NOT_FOUND);
    CHECK_EQ_INT(transport_disconnect(alice, 9999), DNA_ERR_NOT_FOUND);
    CHECK_EQ_INT(transport_disconnect(NULL, alice_id), DNA_ERR_INVALID_ARGUMENT);
    config.data_dir = dir_c;
    config.connect_timeout_ms = -1;
    CHECK(transport_init_with_config("carol", &config) == NULL);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_INVALID_ARGUMENT);
    config.connect_timeout_ms = 0;
    config.resume_window_ms = -5;
    CHECK(transport_init_with_config("carol", &config) == NULL);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_INVALID_ARGUMENT);
    config.resume_window_ms = 0;
    config.turn_server = "127.0.0.1:3478";
    CHECK(transport_init_with_config("carol", &config) == NULL);  /* no username/password */
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_INVALID_ARGUMENT);
    config.turn_server = NULL;
    config.bind_ip = "not an address";
    CHECK(transport_init_with_config("carol", &config) == NULL);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_INVALID_ARGUMENT);
    config.bind_ip = "127.0.0.1";

    /* A clean end: the last message arrives, then bob's receive reports the end (and the fd says
       receive would not block). */
    CHECK_EQ_INT(transport_send(alice, alice_id, (const uint8_t *)"bye", 3), DNA_OK);
    CHECK_EQ_INT(transport_disconnect(alice, alice_id), DNA_OK);
    CHECK_EQ_INT(transport_send(alice, alice_id, (const uint8_t *)"x", 1), DNA_ERR_NOT_FOUND);
    CHECK_EQ_INT(transport_receive(bob, bob_id, &data, &len, 5000), DNA_OK);
    CHECK(len == 3 && data && memcmp(data, "bye", 3) == 0);
    dna_buffer_free(data);
    CHECK_EQ_INT(transport_receive(bob, bob_id, &data, &len, 5000), DNA_ERR_CLOSED);
    CHECK(readable(fd, 0));
    CHECK_EQ_INT(transport_send(bob, bob_id, (const uint8_t *)"x", 1), DNA_ERR_CLOSED);
    CHECK_EQ_INT(transport_disconnect(bob, bob_id), DNA_OK);
    CHECK(!readable(fd, 0));

    /* transport_init alone, configured from the environment: carol joins and reaches bob. */
    setenv("DNA_HOME", dir_c, 1);
    setenv("DNA_BOOTSTRAP", bootstrap, 1);
    setenv("DNA_BIND", "127.0.0.1", 1);
    carol = transport_init("carol");
    CHECK(carol != NULL);
    if (carol) {
        CHECK_EQ_INT(transport_connect(carol, "bob", &other), DNA_OK);
        CHECK_EQ_INT(transport_accept(bob, &bob_id, name, sizeof name, 5000), DNA_OK);
        CHECK(strcmp(name, "carol") == 0);
        CHECK_EQ_INT(transport_send(carol, other, (const uint8_t *)"from carol", 10), DNA_OK);
        CHECK_EQ_INT(transport_receive(bob, bob_id, &data, &len, 5000), DNA_OK);
        CHECK(len == 10 && data && memcmp(data, "from carol", 10) == 0);
        dna_buffer_free(data);
        /* Freeing the context ends its connections: bob hears of it. */
        transport_free(carol);
        CHECK_EQ_INT(transport_receive(bob, bob_id, &data, &len, 5000), DNA_ERR_CLOSED);
    }
    /* Offline delivery: frank comes online once (his inbox keys go into the DHT) and leaves; alice
       stores a message for him; frank comes back and receives it, once, with alice's name. */
    config.data_dir = dir_f;
    frank = transport_init_with_config("frank", &config);
    CHECK(frank != NULL);
    CHECK_EQ_INT(transport_fetch_offline(frank), 0);
    transport_free(frank);
    CHECK_EQ_INT(transport_send_offline(alice, "frank", (const uint8_t *)"stored for later", 16), DNA_OK);
    CHECK_EQ_INT(transport_send_offline(alice, "frank", big, TRANSPORT_OFFLINE_MAX + 1), DNA_ERR_TOO_LARGE);
    CHECK_EQ_INT(transport_send_offline(alice, "nobody-announced-this", (const uint8_t *)"x", 1), DNA_ERR_PEER_OFFLINE);
    CHECK_EQ_INT(transport_send_offline(NULL, "frank", (const uint8_t *)"x", 1), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_send_offline(alice, NULL, (const uint8_t *)"x", 1), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(transport_send_offline(alice, "frank", NULL, 1), DNA_ERR_INVALID_ARGUMENT);
    frank = transport_init_with_config("frank", &config);
    CHECK(frank != NULL);
    if (frank) {
        CHECK(readable(transport_get_fd(frank), 10000));
        CHECK_EQ_INT(transport_receive_offline(frank, small, sizeof small, &data, &len, &sent_at, 0), DNA_ERR_BUFFER_TOO_SMALL);
        data = NULL;
        CHECK_EQ_INT(transport_receive_offline(frank, name, sizeof name, &data, &len, &sent_at, 5000), DNA_OK);
        CHECK(strcmp(name, "alice") == 0);
        CHECK(len == 16 && data && memcmp(data, "stored for later", 16) == 0);
        CHECK(sent_at + 60 > (uint64_t)time(NULL) && sent_at < (uint64_t)time(NULL) + 60);
        dna_buffer_free(data);
        CHECK(!readable(transport_get_fd(frank), 0));
        CHECK_EQ_INT(transport_receive_offline(frank, name, sizeof name, &data, &len, NULL, 0), DNA_ERR_TIMEOUT);
        CHECK_EQ_INT(transport_fetch_offline(frank), 0);
        CHECK_EQ_INT(transport_receive_offline(NULL, name, sizeof name, &data, &len, NULL, 0), DNA_ERR_INVALID_ARGUMENT);
        CHECK_EQ_INT(transport_receive_offline(frank, NULL, sizeof name, &data, &len, NULL, 0), DNA_ERR_INVALID_ARGUMENT);
        CHECK_EQ_INT(transport_receive_offline(frank, name, 0, &data, &len, NULL, 0), DNA_ERR_INVALID_ARGUMENT);
        CHECK_EQ_INT(transport_receive_offline(frank, name, sizeof name, NULL, &len, NULL, 0), DNA_ERR_INVALID_ARGUMENT);
        CHECK_EQ_INT(transport_receive_offline(frank, name, sizeof name, &data, NULL, NULL, 0), DNA_ERR_INVALID_ARGUMENT);
        transport_free(frank);
    }
    CHECK_EQ_INT(transport_fetch_offline(NULL), DNA_ERR_INVALID_ARGUMENT);

    setenv("DNA_PORT", "notaport", 1);
    CHECK(transport_init("dave") == NULL);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_INVALID_ARGUMENT);

    transport_free(alice);
    transport_free(bob);
    transport_free(NULL);
    CHECK_EQ_INT(transport_connect(alice, "bob", &other), DNA_ERR_INVALID_ARGUMENT);  /* a freed handle */
    dht_free(boot);
    return check_report("test_transport");
}
