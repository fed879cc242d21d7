/*
 * dht_discovery.h: peer discovery (seed, "Component 1"). This part holds the seed's signed peer
 * entry; the DHT functions (dht_init, dht_announce, dht_find_peer, ...) join it with the DHT.
 *
 * Threads: the entry functions keep no state and may run on any thread at once.
 */
#ifndef DNATRANSPORT_DHT_DISCOVERY_H
#define DNATRANSPORT_DHT_DISCOVERY_H

#include "dna_common.h"
#include "dna_identity.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The largest canonical encoding of an entry (dht_peer_entry_signed_bytes). */
#define DHT_PEER_ENTRY_SIGNED_MAX 2300
/* Seconds a verifier lets last_seen run ahead of its own clock. */
#define DHT_PEER_ENTRY_MAX_CLOCK_SKEW 600

/* The seed's DHT entry, verbatim. Strings are NUL-terminated inside their arrays. */
typedef struct {
    char identity[256];        /* "bob" */
    uint8_t node_id[20];       /* 160-bit Kademlia node ID */
    char ip_address[46];       /* IPv4 or IPv6 */
    uint16_t port;             /* UDP/TCP port */
    uint64_t last_seen;        /* Unix timestamp */
    uint8_t pubkey[1952];      /* Dilithium3 public key (for verification) */
    uint8_t signature[3309];   /* Self-signed (proves ownership of identity) */
} dht_peer_entry_t;

/** DHT_PEER_ENTRY_SIGNED_MAX, for bindings. Any thread. */
DNA_EXPORT size_t dht_peer_entry_signed_max(void);

/**
 * Signs the entry with its identity's key from data_dir (NULL: default), creating the identity on
 * first use: fills pubkey and signature. The other fields must be valid (see verify).
 * Returns DNA_OK, DNA_ERR_BAD_ENTRY, DNA_ERR_INVALID_ARGUMENT, DNA_ERR_KEY_FILE,
 * DNA_ERR_KEY_PERMISSIONS, DNA_ERR_IO. Any thread.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_peer_entry_sign(dht_peer_entry_t *entry, const char *data_dir);

/**
 * Verifies an entry: identity 1..255 bytes of UTF-8, NUL-terminated; node_id not all zero;
 * ip_address IPv4 or IPv6 text; port not 0; last_seen not 0 and at most
 * DHT_PEER_ENTRY_MAX_CLOCK_SKEW seconds ahead of this machine's clock; pubkey an ML-DSA-65 key;
 * signature valid over dht_peer_entry_signed_bytes. Returns DNA_OK, DNA_ERR_BAD_SIGNATURE,
 * DNA_ERR_BAD_ENTRY, DNA_ERR_INVALID_ARGUMENT (NULL). Any thread.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_peer_entry_verify(const dht_peer_entry_t *entry);

/**
 * Writes the canonical bytes the signature covers (docs/PROTOCOL.md) so other implementations can
 * verify. *len_out: (out) bytes written, or needed when out_capacity is too small.
 * Returns DNA_OK, DNA_ERR_BUFFER_TOO_SMALL, DNA_ERR_BAD_ENTRY, DNA_ERR_INVALID_ARGUMENT. Any thread.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_peer_entry_signed_bytes(const dht_peer_entry_t *entry, uint8_t *out,
    size_t out_capacity, size_t *len_out);

#ifdef __cplusplus
}
#endif

#endif /* DNATRANSPORT_DHT_DISCOVERY_H */
