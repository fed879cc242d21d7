/* Identities and signed peer entries through the C ABI. */
#define _POSIX_C_SOURCE 200809L
#include <dnatransport.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "check.h"

static char dir[64];

static void make_entry(dht_peer_entry_t *e, const char *name) {
    int i;
    memset(e, 0, sizeof *e);
    strcpy(e->identity, name);
    for (i = 0; i < 20; i++) e->node_id[i] = (uint8_t)(i + 1);
    strcpy(e->ip_address, "192.0.2.1");
    e->port = 4567;
    e->last_seen = (uint64_t)time(NULL);
}

static void test_identities(void) {
    uint8_t key[DNA_PUBLIC_KEY_SIZE], key2[DNA_PUBLIC_KEY_SIZE];
    char fp[DNA_FINGERPRINT_SIZE], fp2[DNA_FINGERPRINT_SIZE], path[128];
    size_t len = 0;
    FILE *f;
    dna_identity_t *alice = dna_identity_load(dir, "alice", 1), *again;

    CHECK(alice != NULL);
    CHECK_EQ_INT(dna_identity_public_key(alice, key, sizeof key, &len), DNA_OK);
    CHECK_EQ_INT(len, DNA_PUBLIC_KEY_SIZE);
    CHECK_EQ_INT(dna_identity_public_key(alice, key, 10, &len), DNA_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ_INT(len, DNA_PUBLIC_KEY_SIZE);
    CHECK_EQ_INT(dna_identity_fingerprint(alice, fp, sizeof fp), DNA_OK);
    CHECK_EQ_INT(strlen(fp), 39);
    CHECK(fp[4] == ':' && fp[34] == ':');
    CHECK_EQ_INT(dna_identity_fingerprint(alice, fp2, 39), DNA_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ_INT(dna_fingerprint(key, sizeof key, fp2, sizeof fp2), DNA_OK);
    CHECK(strcmp(fp, fp2) == 0);
    CHECK_EQ_INT(dna_fingerprint(key, 100, fp2, sizeof fp2), DNA_ERR_INVALID_ARGUMENT);

    /* Loading again gives the same key; without create a missing identity is NOT_FOUND. */
    again = dna_identity_load(dir, "alice", 0);
    CHECK(again != NULL);
    CHECK_EQ_INT(dna_identity_public_key(again, key2, sizeof key2, &len), DNA_OK);
    CHECK(memcmp(key, key2, sizeof key) == 0);
    dna_identity_free(again);
    CHECK(dna_identity_load(dir, "nobody", 0) == NULL);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_NOT_FOUND);
    CHECK(dna_identity_load(dir, "", 1) == NULL);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_INVALID_ARGUMENT);
    CHECK(dna_identity_load(dir, NULL, 1) == NULL);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_INVALID_ARGUMENT);

    /* Key files others can read, and corrupt ones, are refused and kept. */
    snprintf(path, sizeof path, "%s/identities/alice.key", dir);
    CHECK_EQ_INT(chmod(path, 0644), 0);
    CHECK(dna_identity_load(dir, "alice", 1) == NULL);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_KEY_PERMISSIONS);
    CHECK_EQ_INT(chmod(path, 0600), 0);
    CHECK(truncate(path, 100) == 0);
    CHECK(dna_identity_load(dir, "alice", 1) == NULL);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_KEY_FILE);
    f = fopen(path, "rb");
    CHECK(f != NULL);
    if (f) { fseek(f, 0, SEEK_END); CHECK_EQ_INT(ftell(f), 100); fclose(f); }

    /* Handles: NULL, freed and foreign pointers are refused, freeing twice is harmless. */
    CHECK_EQ_INT(dna_identity_public_key(NULL, key, sizeof key, &len), DNA_ERR_INVALID_ARGUMENT);
    dna_identity_free(alice);
    CHECK_EQ_INT(dna_identity_public_key(alice, key, sizeof key, &len), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(dna_identity_fingerprint((const dna_identity_t *)fp, fp2, sizeof fp2), DNA_ERR_INVALID_ARGUMENT);
    dna_identity_free(alice);
    dna_identity_free(NULL);
    CHECK_EQ_INT(dna_identity_max(), DNA_IDENTITY_MAX);
    CHECK_EQ_INT(dna_public_key_size(), DNA_PUBLIC_KEY_SIZE);
    CHECK_EQ_INT(dna_signature_size(), DNA_SIGNATURE_SIZE);
}

static void test_entries(void) {
    static dht_peer_entry_t e, copy;
    uint8_t bytes[DHT_PEER_ENTRY_SIGNED_MAX];
    size_t len = 0;

    make_entry(&e, "bob");
    CHECK_EQ_INT(dht_peer_entry_sign(&e, dir), DNA_OK);
    CHECK_EQ_INT(dht_peer_entry_verify(&e), DNA_OK);
    CHECK_EQ_INT(dht_peer_entry_signed_bytes(&e, bytes, sizeof bytes, &len), DNA_OK);
    CHECK_EQ_INT(len, 16 + 1 + 3 + 20 + 1 + 9 + 2 + 8 + DNA_PUBLIC_KEY_SIZE);
    CHECK(memcmp(bytes, "DNA-PEER-ENTRY-1", 16) == 0);
    CHECK_EQ_INT(dht_peer_entry_signed_bytes(&e, bytes, 10, &len), DNA_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ_INT(len, 16 + 1 + 3 + 20 + 1 + 9 + 2 + 8 + DNA_PUBLIC_KEY_SIZE);
    CHECK_EQ_INT(dht_peer_entry_signed_max(), DHT_PEER_ENTRY_SIGNED_MAX);

    copy = e; copy.port++;
    CHECK_EQ_INT(dht_peer_entry_verify(&copy), DNA_ERR_BAD_SIGNATURE);
    copy = e; copy.signature[100] ^= 4;
    CHECK_EQ_INT(dht_peer_entry_verify(&copy), DNA_ERR_BAD_SIGNATURE);
    copy = e; copy.last_seen = (uint64_t)time(NULL) + DHT_PEER_ENTRY_MAX_CLOCK_SKEW + 60;
    CHECK_EQ_INT(dht_peer_entry_verify(&copy), DNA_ERR_BAD_ENTRY);
    copy = e; memset(copy.identity, 'x', sizeof copy.identity);
    CHECK_EQ_INT(dht_peer_entry_verify(&copy), DNA_ERR_BAD_ENTRY);
    copy = e; memset(copy.node_id, 0, sizeof copy.node_id);
    CHECK_EQ_INT(dht_peer_entry_verify(&copy), DNA_ERR_BAD_ENTRY);
    copy = e; strcpy(copy.ip_address, "not-an-ip");
    CHECK_EQ_INT(dht_peer_entry_verify(&copy), DNA_ERR_BAD_ENTRY);
    CHECK_EQ_INT(dht_peer_entry_verify(NULL), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(dht_peer_entry_sign(NULL, dir), DNA_ERR_INVALID_ARGUMENT);

    /* Signing with a corrupt key file fails and leaves the signature untouched. */
    make_entry(&copy, "alice");
    CHECK_EQ_INT(dht_peer_entry_sign(&copy, dir), DNA_ERR_KEY_FILE);
    CHECK(copy.signature[0] == 0 && copy.pubkey[0] == 0);
    make_entry(&copy, "carol");
    copy.port = 0;
    CHECK_EQ_INT(dht_peer_entry_sign(&copy, dir), DNA_ERR_BAD_ENTRY);
}

int main(void) {
    strcpy(dir, "/tmp/dna-c-test-XXXXXX");
    if (!mkdtemp(dir)) return 2;
    test_identities();
    test_entries();
    {
        char command[96];
        snprintf(command, sizeof command, "rm -rf %s", dir);
        if (system(command) != 0) fprintf(stderr, "could not remove %s\n", dir);
    }
    return check_report("test_identity");
}
