/* NAT traversal through the C ABI: two ICE agents in one process connect over the host's own
   addresses (no servers), exchange datagrams through the returned fds; every argument check. */
#define _POSIX_C_SOURCE 200809L
#include <dnatransport.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>
#include "check.h"

typedef struct {
    nat_traversal_context_t *ctx;
    int fd;
    int result;
} establish_job;

static void *establish(void *argument) {
    establish_job *job = argument;
    job->result = nat_establish_connection(job->ctx, &job->fd);
    return NULL;
}

static int recv_within(int fd, char *buffer, size_t capacity, int timeout_ms) {
    struct pollfd p;
    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;
    if (poll(&p, 1, timeout_ms) != 1) return -1;
    return (int)recv(fd, buffer, capacity, 0);
}

int main(void) {
    nat_traversal_context_t *a, *b;
    ice_candidate_t ca[NAT_MAX_CANDIDATES], cb[NAT_MAX_CANDIDATES], local, remote, bad;
    size_t na = NAT_MAX_CANDIDATES, nb = NAT_MAX_CANDIDATES, zero = 0, i;
    char ufrag_a[NAT_CREDENTIAL_MAX], pwd_a[NAT_CREDENTIAL_MAX], ufrag_b[NAT_CREDENTIAL_MAX], pwd_b[NAT_CREDENTIAL_MAX];
    char small[2], buffer[128];
    establish_job job_b;
    pthread_t thread;
    int fd_a = -1, received = 0, n;

    a = nat_traversal_init(NULL);
    b = nat_traversal_init(NULL);
    CHECK(a != NULL && b != NULL);
    CHECK_EQ_INT(nat_set_controlling(a, 1), DNA_OK);
    CHECK_EQ_INT(nat_set_timeout(a, 5000), DNA_OK);
    CHECK_EQ_INT(nat_set_timeout(b, 5000), DNA_OK);

    /* Before gathering: nothing to establish, no pair. */
    CHECK_EQ_INT(nat_establish_connection(a, &fd_a), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(nat_get_selected_pair(a, &local, &remote), DNA_ERR_NOT_FOUND);

    /* A buffer too small says how many there are. */
    CHECK_EQ_INT(nat_gather_candidates(a, NULL, &zero), DNA_ERR_BUFFER_TOO_SMALL);
    CHECK(zero >= 1);
    CHECK_EQ_INT(nat_gather_candidates(a, ca, &na), DNA_OK);
    CHECK_EQ_INT(nat_gather_candidates(b, cb, &nb), DNA_OK);
    CHECK(na == zero && na >= 1 && nb >= 1);
    for (i = 0; i < na; i++) CHECK(ca[i].type == CANDIDATE_LOCAL && ca[i].port != 0 && ca[i].ip[0] != 0);

    CHECK_EQ_INT(nat_get_local_credentials(a, ufrag_a, sizeof ufrag_a, pwd_a, sizeof pwd_a), DNA_OK);
    CHECK_EQ_INT(nat_get_local_credentials(b, ufrag_b, sizeof ufrag_b, pwd_b, sizeof pwd_b), DNA_OK);
    CHECK(strlen(ufrag_a) >= 4 && strlen(pwd_a) >= 22 && strcmp(ufrag_a, ufrag_b) != 0);
    CHECK_EQ_INT(nat_get_local_credentials(a, small, sizeof small, pwd_a, sizeof pwd_a), DNA_ERR_BUFFER_TOO_SMALL);

    /* No remote credentials yet. */
    CHECK_EQ_INT(nat_establish_connection(a, &fd_a), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(nat_set_remote_credentials(a, ufrag_b, pwd_b), DNA_OK);
    CHECK_EQ_INT(nat_set_remote_credentials(b, ufrag_a, pwd_a), DNA_OK);
    for (i = 0; i < nb; i++) CHECK_EQ_INT(nat_add_remote_candidate(a, &cb[i]), DNA_OK);
    for (i = 0; i < na; i++) CHECK_EQ_INT(nat_add_remote_candidate(b, &ca[i]), DNA_OK);

    job_b.ctx = b;
    job_b.fd = -1;
    job_b.result = 1;
    CHECK(pthread_create(&thread, NULL, establish, &job_b) == 0);
    CHECK_EQ_INT(nat_establish_connection(a, &fd_a), DNA_OK);
    pthread_join(thread, NULL);
    CHECK_EQ_INT(job_b.result, DNA_OK);
    CHECK(fd_a >= 0 && job_b.fd >= 0);
    CHECK_EQ_INT(nat_establish_connection(a, &n), DNA_ERR_INVALID_ARGUMENT); /* once */

    CHECK_EQ_INT(nat_get_selected_pair(a, &local, &remote), DNA_OK);
    CHECK(local.type == CANDIDATE_LOCAL && remote.port != 0);

    /* Whole datagrams both ways (UDP: resend until one arrives). */
    for (i = 0; i < 50 && !received; i++) {
        CHECK(send(fd_a, "ping", 4, 0) == 4);
        n = recv_within(job_b.fd, buffer, sizeof buffer, 100);
        received = n == 4 && memcmp(buffer, "ping", 4) == 0;
    }
    CHECK(received);
    received = 0;
    for (i = 0; i < 50 && !received; i++) {
        CHECK(send(job_b.fd, "pong!", 5, 0) == 5);
        n = recv_within(fd_a, buffer, sizeof buffer, 100);
        received = n == 5 && memcmp(buffer, "pong!", 5) == 0;
    }
    CHECK(received);

    /* Arguments. */
    memset(&bad, 0, sizeof bad);
    strcpy(bad.ip, "192.0.2.1");
    bad.port = 0;
    CHECK_EQ_INT(nat_add_remote_candidate(a, &bad), DNA_ERR_INVALID_ARGUMENT);
    bad.port = 9;
    strcpy(bad.ip, "example.org");
    CHECK_EQ_INT(nat_add_remote_candidate(a, &bad), DNA_ERR_INVALID_ARGUMENT);
    strcpy(bad.ip, "192.0.2.1");
    bad.type = CANDIDATE_RELAY;
    memset(&bad.type, 0x7f, sizeof bad.type);
    CHECK_EQ_INT(nat_add_remote_candidate(a, &bad), DNA_ERR_INVALID_ARGUMENT);
    memset(bad.ip, 'x', sizeof bad.ip); /* not NUL-terminated */
    bad.type = CANDIDATE_LOCAL;
    CHECK_EQ_INT(nat_add_remote_candidate(a, &bad), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(nat_add_remote_candidate(a, NULL), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(nat_add_remote_candidate(NULL, &ca[0]), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(nat_gather_candidates(a, NULL, NULL), DNA_ERR_INVALID_ARGUMENT);
    na = 4;
    CHECK_EQ_INT(nat_gather_candidates(a, NULL, &na), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(nat_set_remote_credentials(a, "abc", pwd_b), DNA_ERR_INVALID_ARGUMENT);   /* under 4 */
    CHECK_EQ_INT(nat_set_remote_credentials(a, "ab d", pwd_b), DNA_ERR_INVALID_ARGUMENT);  /* space */
    CHECK_EQ_INT(nat_set_remote_credentials(a, NULL, pwd_b), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(nat_set_turn_server(a, "192.0.2.1:3478", "u", "p"), DNA_ERR_INVALID_ARGUMENT); /* gathered */
    CHECK_EQ_INT(nat_set_turn_server(b, NULL, "u", "p"), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(nat_set_turn_server(b, "192.0.2.1:3478", "", "p"), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(nat_set_controlling(a, 0), DNA_ERR_INVALID_ARGUMENT); /* checks started */
    CHECK_EQ_INT(nat_set_timeout(a, 99), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(nat_set_timeout(a, 600001), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(nat_get_selected_pair(a, NULL, &remote), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(nat_get_local_credentials(NULL, ufrag_a, sizeof ufrag_a, pwd_a, sizeof pwd_a), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(nat_establish_connection(a, NULL), DNA_ERR_INVALID_ARGUMENT);
    CHECK(nat_traversal_init("no port here") == NULL);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_INVALID_ARGUMENT);
    CHECK(nat_traversal_init("192.0.2.1:0") == NULL);

    /* After free the peer's end refuses what is sent. */
    nat_traversal_free(b);
    CHECK(send(job_b.fd, "x", 1, 0) == -1);
    nat_traversal_free(a);
    nat_traversal_free(NULL);
    close(fd_a);
    close(job_b.fd);
    return check_report("test_nat");
}
