/*
 * dht_discovery.h: peer discovery (seed, "Component 1"): a Kademlia DHT that maps an identity to
 * its signed entry (address, port, ML-DSA-65 key). The protocol is docs/PROTOCOL.md §5.
 *
 * A dht_context_t owns one UDP socket and one I/O thread that runs the node; the calls below hand
 * work to that thread and wait for it (they block for at most the time each one documents).
 *
 * Threads: any function from any thread; a context may be used by several threads at once. The
 * entry functions keep no state.
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

/* A DHT node (opaque): one UDP socket, one I/O thread. */
typedef struct dht_context_t dht_context_t;

/* Zeroed (memset) means all defaults. */
typedef struct {
    const char *bind_ip;   /* NULL: all interfaces, IPv4 and IPv6 */
    uint16_t    port;      /* 0: any free port */
    const char *data_dir;  /* node id, routing table, entries, identities; NULL: $DNA_HOME, else ~/.dna */
    /* extensions may follow */
} dht_config_t;

/* Counters of a running node (dht_get_stats). */
typedef struct {
    uint64_t routing_table_size;  /* contacts in the k-buckets */
    uint64_t stored_entries;      /* entries held for others */
    uint64_t received;            /* datagrams */
    uint64_t sent;                /* datagrams */
    uint64_t requests_answered;
    uint64_t dropped;             /* garbage, truncated, oversized, bad node ids */
    uint64_t rate_limited;        /* requests over a source's rate */
    uint64_t refused_entries;     /* forged, expired, taken or over quota */
    uint64_t timeouts;            /* requests that got no answer */
    uint64_t refused_contacts;    /* contacts at addresses no node can have (0.0.0.0, multicast, broadcast,
                                     loopback learnt from elsewhere...): never asked (PROTOCOL.md §5.1) */
    uint64_t refused_pieces;      /* pieces of multi-datagram messages over a source's rate or its (or its
                                     network's) share of the reassembly state (PROTOCOL.md §5.1) */
} dht_stats_t;

/**
 * Starts a DHT node: binds the UDP socket, loads (or makes, on first use) the node id from
 * data_dir/dht/node and the saved routing table and entries from data_dir/dht/state, starts the I/O
 * thread. config: (in, optional) NULL for defaults. Returns a context to free with dht_free(), or
 * NULL with dna_last_error(): DNA_ERR_IO (socket, bind, files), DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT dht_context_t *dht_init(const dht_config_t *config);

/**
 * Joins the network through the given nodes (seed). nodes: (in) NULL-terminated array of
 * "host:port" strings ("[v6]:port" for IPv6; names are resolved). Pings them, then looks up the
 * own id; retries with backoff (0.5, 1, 2, 4 s) until some node answers. Blocks up to about 15 s.
 * Addresses no node can have (0.0.0.0, multicast, broadcast: PROTOCOL.md §5.1) are skipped.
 * Returns DNA_OK, DNA_ERR_UNREACHABLE (no node answered), DNA_ERR_INVALID_ARGUMENT (none resolves to
 * an address a node can have).
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_bootstrap(dht_context_t *ctx, const char **nodes);

/**
 * Announces that identity is at ip:port (seed): signs an entry with the identity's key from the
 * context's data_dir (created on first use) and stores it on the k nodes closest to
 * SHA-256(identity). The context re-announces it every 5 minutes while it runs. Blocks up to 30 s.
 * Returns DNA_OK (stored on at least one node), DNA_ERR_UNREACHABLE (no node stored it),
 * DNA_ERR_NAME_TAKEN (no node stored it and holders said a live entry of the name has another key:
 * first come, first served, PROTOCOL.md §5.2), DNA_ERR_CLOCK_SKEW (no node stored it and holders
 * refused it for its time: this machine's clock is off theirs by more than 10 minutes and correcting
 * by their times did not help; the correction applied when it does help is logged at warning level),
 * DNA_ERR_TIMEOUT, DNA_ERR_INVALID_ARGUMENT (bad name, address or port 0), DNA_ERR_KEY_FILE,
 * DNA_ERR_KEY_PERMISSIONS, DNA_ERR_IO.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_announce(dht_context_t *ctx, const char *identity, const char *ip, uint16_t port);

/**
 * Finds identity's address (seed). ip_out: (out) at least 46 bytes, NUL-terminated. port_out:
 * (out). Only a verified entry is returned, the freshest of those the k closest nodes hold.
 * Blocks up to 30 s. Returns DNA_OK, DNA_ERR_NOT_FOUND, DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_find_peer(dht_context_t *ctx, const char *identity, char *ip_out, uint16_t *port_out);

/**
 * As dht_find_peer, but gives the whole signed entry (with the peer's public key, e.g. for
 * dna_handshake_initiate). entry_out: (out). Returns DNA_OK, DNA_ERR_NOT_FOUND, DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_find_peer_entry(dht_context_t *ctx, const char *identity, dht_peer_entry_t *entry_out);

/**
 * Re-announces every identity announced through this context with a fresh last_seen and refreshes
 * idle buckets (seed: every 5 minutes; the context also does it by itself). Waits for each
 * announce (up to 30 s each, as dht_announce). Returns DNA_OK (every entry stored on at least one
 * node), DNA_ERR_UNREACHABLE / DNA_ERR_NAME_TAKEN / DNA_ERR_CLOCK_SKEW (an entry stored nowhere, as
 * dht_announce), DNA_ERR_TIMEOUT, DNA_ERR_CLOSED, DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_refresh(dht_context_t *ctx);

/** The bound UDP port (1..65535), or DNA_ERR_INVALID_ARGUMENT. */
DNA_EXPORT DNA_WARN_UNUSED int dht_get_port(dht_context_t *ctx);

/** Copies the node's counters to stats_out. Returns DNA_OK, DNA_ERR_CLOSED, DNA_ERR_INVALID_ARGUMENT. */
DNA_EXPORT DNA_WARN_UNUSED int dht_get_stats(dht_context_t *ctx, dht_stats_t *stats_out);

/** Saves the routing table and entries, stops the I/O thread, frees the context. NULL does nothing. */
DNA_EXPORT void dht_free(dht_context_t *ctx);

#ifdef __cplusplus
}
#endif

#endif /* DNATRANSPORT_DHT_DISCOVERY_H */
