/*
 * dht_values.h: signed values at any DHT key (docs/PROTOCOL.md §10): what a messenger keeps in the
 * network (profiles, contact lists, group membership). A value is signed by its writer (ML-DSA-65),
 * lives for its lifetime after its creation time (both carried, so every holder agrees), and is
 * stored on the k nodes closest to its key. Many writers may write at one key: each holds one value
 * per slot there, and a write replaces only that writer's older value of the slot.
 *
 * The calls below work on a dht_context_t (dht_discovery.h) and block for at most timeout_ms.
 *
 * Threads: any function from any thread; a context may be used by several threads at once.
 */
#ifndef DNATRANSPORT_DHT_VALUES_H
#define DNATRANSPORT_DHT_VALUES_H

#include "dna_common.h"
#include "dht_discovery.h"
#include "network_transport.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes of a key, of a signer id (SHA-256 of the signer's public key). */
#define DHT_VALUE_KEY_SIZE 20
#define DHT_VALUE_SIGNER_ID_SIZE 32
/* The most data a value carries (64 KiB), and the longest lifetime (30 days, in seconds). */
#define DHT_VALUE_MAX_DATA 65536
#define DHT_VALUE_MAX_LIFETIME 2592000u
/* The most data a sealed value carries (dht_value_put_sealed): 64 KiB less the 1,137 bytes sealing adds. */
#define DHT_VALUE_MAX_SEALED_DATA 64399
/* dht_value_t.flags: the slot was deleted (no data); the data is sealed to one reader (dht_value_open). */
#define DHT_VALUE_FLAG_TOMBSTONE 1u
#define DHT_VALUE_FLAG_SEALED 2u

/* One verified value, as dht_value_get returns it. Strings are NUL-terminated inside their arrays. */
typedef struct {
    uint8_t key[DHT_VALUE_KEY_SIZE];
    char signer[256];                             /* the writer's identity name */
    uint8_t signer_id[DHT_VALUE_SIGNER_ID_SIZE];  /* SHA-256 of the writer's public key */
    uint32_t slot;
    uint64_t sequence;       /* higher replaces lower, per writer and slot */
    uint64_t created;        /* Unix seconds */
    uint32_t lifetime;       /* seconds after created */
    uint16_t type;           /* the application's own number */
    uint8_t flags;           /* DHT_VALUE_FLAG_* */
    size_t data_len;
    const uint8_t *data;     /* data_len bytes inside the array dht_value_get returned */
} dht_value_t;

/**
 * The DHT node of a transport context, so that a messenger uses one node and one identity for its
 * connections and its values: the dht_ calls work on it (dht_value_put signs with the identities
 * in the transport's data_dir). The handle belongs to ctx: it stays valid until transport_free,
 * and dht_free on it does nothing. Returns NULL (dna_last_error: DNA_ERR_INVALID_ARGUMENT) when
 * ctx is not a live transport context. Any thread.
 */
DNA_EXPORT dht_context_t *transport_get_dht(transport_context_t *ctx);

/**
 * The key for an application's key text: the first 20 bytes of SHA-256(text), as identities' keys
 * are made (PROTOCOL.md §2). text: NUL-terminated, any bytes. Returns DNA_OK,
 * DNA_ERR_INVALID_ARGUMENT (NULL). Any thread.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_value_key(const char *text, uint8_t key_out[DHT_VALUE_KEY_SIZE]);

/**
 * Signs a value as identity (its key in the context's data_dir, made on first use) and stores it
 * on the k nodes closest to key, replacing identity's earlier value of the slot there. The
 * sequence is chosen here: this machine's Unix time in ms, or one more than the last sequence this
 * context wrote for the key and slot when that is higher. created is now; lifetime_s 1 to
 * DHT_VALUE_MAX_LIFETIME; data_len at most DHT_VALUE_MAX_DATA (data may be NULL when 0).
 * Waits up to timeout_ms (0: 30 s) for the node to have contacts, then for the holders' answers.
 * holders_out (may be NULL): nodes that stored it, this node included when it is one of the
 * closest. sequence_out (may be NULL): the sequence written.
 * Returns DNA_OK (at least one other node stored it), DNA_ERR_UNREACHABLE (none did: no contacts,
 * or no answer), DNA_ERR_SUPERSEDED (holders hold a newer value of this writer's slot, written by
 * another process of the identity), DNA_ERR_CLOCK_SKEW (holders refused it for its time),
 * DNA_ERR_REFUSED (holders answered and refused it: the writer's quota there is full, they are
 * busy with other uploads, or they found it invalid; the debug log line says which),
 * DNA_ERR_TIMEOUT, DNA_ERR_INVALID_ARGUMENT (also when called from a dht_value_fn or log handler:
 * the I/O thread would wait for itself), DNA_ERR_TOO_LARGE, DNA_ERR_KEY_FILE,
 * DNA_ERR_KEY_PERMISSIONS, DNA_ERR_CLOSED. Any thread but the context's I/O thread.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_value_put(dht_context_t *ctx, const char *identity,
    const uint8_t key[DHT_VALUE_KEY_SIZE], uint32_t slot, const uint8_t *data, size_t data_len, uint16_t type,
    uint32_t lifetime_s, int timeout_ms, int *holders_out, uint64_t *sequence_out);

/**
 * Sealed values (PROTOCOL.md §10.6): a value whose data only one identity, the reader, can open,
 * such as a contact list for oneself or a group key for one member. The data is sealed to the
 * reader's inbox keys (X25519 and ML-KEM-768, the keys offline mail is sealed to, §8) and bound to
 * the value's key, writer, slot and type; the value is signed as any other, and holders store,
 * replace, republish and push it as any other (they cannot read it, nor tell from it whom it is
 * for; the writer's lookup of the reader's keys is seen by the holders of the reader's inbox).
 *
 * dht_value_put_sealed: as dht_value_put, with data (at most DHT_VALUE_MAX_SEALED_DATA bytes)
 * sealed to recipient and DHT_VALUE_FLAG_SEALED set. When recipient is identity itself, its keys
 * are made here; otherwise the recipient's published inbox key record is looked up first (within
 * timeout_ms), by the first-come rule holders apply (PROTOCOL.md §10.6): the key of recipient's
 * live entry when a lookup finds one, else the key most holders of its inbox keep. A transport
 * context publishes its identity's record by itself; on a dht_context_t call
 * dht_value_publish_keys. Returns as dht_value_put, and DNA_ERR_PEER_OFFLINE (recipient has
 * published no record that can be used), DNA_ERR_PROTOCOL (its record holds a key that cannot be
 * sealed to), DNA_ERR_TOO_LARGE. Blocks: any thread but the context's I/O thread.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_value_put_sealed(dht_context_t *ctx, const char *identity, const char *recipient,
    const uint8_t key[DHT_VALUE_KEY_SIZE], uint32_t slot, const uint8_t *data, size_t data_len, uint16_t type,
    uint32_t lifetime_s, int timeout_ms, int *holders_out, uint64_t *sequence_out);

/**
 * Opens a sealed value (DHT_VALUE_FLAG_SEALED; from dht_value_get, dht_value_get_async or a
 * dht_value_fn) as identity, its reader (its key in the context's data_dir). *data_out: (out,
 * owned) the plaintext, *len_out bytes; free it with dna_buffer_free (NULL when empty). Works
 * without the network. Returns DNA_OK, DNA_ERR_AUTHENTICATION (sealed to another identity, or its
 * data, key, signer_id, slot or type changed), DNA_ERR_NOT_FOUND (identity has no key in data_dir:
 * none is made), DNA_ERR_INVALID_ARGUMENT (a NULL argument, a context freed, a value that is not
 * sealed or is a tombstone, data shorter than sealing makes), DNA_ERR_NO_MEMORY, DNA_ERR_KEY_FILE,
 * DNA_ERR_KEY_PERMISSIONS. Any thread, callbacks included.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_value_open(dht_context_t *ctx, const char *identity, const dht_value_t *value,
    uint8_t **data_out, size_t *len_out);

/**
 * Publishes identity's inbox keys (its inbox key record, PROTOCOL.md §8.1, signed with its key in
 * the context's data_dir) on the nodes closest to its inbox, so that others can seal values
 * (dht_value_put_sealed) and offline mail to it. Holders keep a record for 7 days after it was made
 * and republish it; call this again within that time (a transport context publishes its own
 * identity's record every 5 minutes by itself). Waits up to timeout_ms (0: 30 s) for contacts and
 * for the holders. holders_out (may be NULL): nodes that stored it. Returns DNA_OK (a node stored
 * it), DNA_ERR_NAME_TAKEN (more holders keep the name's keys signed by another key than stored
 * these: first come, PROTOCOL.md §8.3; sealing to the name uses the other key), DNA_ERR_UNREACHABLE
 * (no node stored it), DNA_ERR_TIMEOUT, DNA_ERR_INVALID_ARGUMENT (also from the I/O thread),
 * DNA_ERR_KEY_FILE, DNA_ERR_KEY_PERMISSIONS, DNA_ERR_CLOSED. Any thread but the context's I/O thread.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_value_publish_keys(dht_context_t *ctx, const char *identity, int timeout_ms, int *holders_out);

/**
 * Deletes identity's value of the slot at key: writes a tombstone (a value with no data and
 * DHT_VALUE_FLAG_TOMBSTONE) at the next sequence, which holders keep for lifetime_s (give at least
 * the deleted value's remaining lifetime; 0: DHT_VALUE_MAX_LIFETIME). Returns as dht_value_put.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_value_delete(dht_context_t *ctx, const char *identity,
    const uint8_t key[DHT_VALUE_KEY_SIZE], uint32_t slot, uint32_t lifetime_s, int timeout_ms, int *holders_out);

/**
 * Gets the values at key from the k nodes closest to it: the freshest verified value per writer and
 * slot (tombstones included), ordered by signer_id, then slot. signer_id (may be NULL: every writer)
 * keeps one writer's; since keeps those with a sequence above it (0: all).
 * *values_out: (out, owned) an array of *count_out values, its data inside the same allocation;
 * free it with dna_buffer_free (NULL when the count is 0). Waits up to timeout_ms (0: 30 s).
 * Returns DNA_OK (also with no value found), DNA_ERR_UNREACHABLE (no contacts, or none of the
 * closest nodes answered), DNA_ERR_TIMEOUT, DNA_ERR_INVALID_ARGUMENT (also when called from a
 * dht_value_fn or log handler: the I/O thread would wait for itself), DNA_ERR_NO_MEMORY,
 * DNA_ERR_CLOSED. Any thread but the context's I/O thread.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_value_get(dht_context_t *ctx, const uint8_t key[DHT_VALUE_KEY_SIZE],
    const uint8_t *signer_id, uint64_t since, int timeout_ms, dht_value_t **values_out, size_t *count_out);

/**
 * Receives the end of an asynchronous value operation (dht_value_put_async,
 * dht_value_put_sealed_async, dht_value_delete_async, dht_value_get_async): op_id as the call gave
 * it; result the error code the blocking form would return (DNA_OK, DNA_ERR_UNREACHABLE,
 * DNA_ERR_REFUSED, DNA_ERR_SUPERSEDED, DNA_ERR_CLOCK_SKEW, DNA_ERR_TIMEOUT, DNA_ERR_NO_MEMORY; a
 * sealed put also DNA_ERR_PEER_OFFLINE and DNA_ERR_PROTOCOL; DNA_ERR_CLOSED when the context was
 * freed first). A put or
 * delete gives holders and sequence (values NULL, count 0); a get gives values and count as
 * dht_value_get would (holders and sequence 0), the values and their data valid only during the
 * call. user_data as given. Called exactly once per operation started, on the context's I/O thread
 * (within dht_free or transport_free, with DNA_ERR_CLOSED, for those under way then), with the same
 * rules as dht_value_fn: it may start further asynchronous operations and listeners.
 */
typedef void (*dht_value_done_fn)(uint64_t op_id, int result, int holders, uint64_t sequence, const dht_value_t *values,
    size_t count, void *user_data);

/**
 * dht_value_put without waiting: signs the value here (as dht_value_put: the sequence is chosen now)
 * and returns; the node waits up to timeout_ms (0: 30 s) for contacts and for the holders' answers,
 * then calls fn. op_id_out (may be NULL): the operation's id; sequence_out (may be NULL): the
 * sequence written. fn may run before this returns. Returns DNA_OK (fn will be called),
 * DNA_ERR_INVALID_ARGUMENT (fn NULL, bad arguments), DNA_ERR_TOO_LARGE, DNA_ERR_KEY_FILE,
 * DNA_ERR_KEY_PERMISSIONS, DNA_ERR_CLOSED (then fn is never called). Any thread, fn and
 * dht_value_fn included.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_value_put_async(dht_context_t *ctx, const char *identity,
    const uint8_t key[DHT_VALUE_KEY_SIZE], uint32_t slot, const uint8_t *data, size_t data_len, uint16_t type,
    uint32_t lifetime_s, int timeout_ms, dht_value_done_fn fn, void *user_data, uint64_t *op_id_out,
    uint64_t *sequence_out);

/**
 * dht_value_put_sealed without waiting: the sequence is chosen now (sequence_out); sealing to
 * identity itself and signing happen here, while the lookup of another recipient's inbox key
 * record, the sealing and signing then run on a worker thread of the context (at most 4 at once,
 * the rest queued; the lookup waits for the network), then the put as dht_value_put_async's. All
 * of it within timeout_ms (0: 30 s). fn gets what dht_value_put_sealed would return
 * (DNA_ERR_PEER_OFFLINE, DNA_ERR_PROTOCOL and DNA_ERR_UNREACHABLE included) on the context's I/O
 * thread, exactly once (DNA_ERR_CLOSED within dht_free or transport_free for those under way then,
 * and the worker stops waiting). Returns DNA_OK (fn will be called), DNA_ERR_INVALID_ARGUMENT,
 * DNA_ERR_TOO_LARGE (above DHT_VALUE_MAX_SEALED_DATA), DNA_ERR_KEY_FILE, DNA_ERR_KEY_PERMISSIONS,
 * DNA_ERR_CLOSED (then fn is never called). Any thread, fn and dht_value_fn included.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_value_put_sealed_async(dht_context_t *ctx, const char *identity, const char *recipient,
    const uint8_t key[DHT_VALUE_KEY_SIZE], uint32_t slot, const uint8_t *data, size_t data_len, uint16_t type,
    uint32_t lifetime_s, int timeout_ms, dht_value_done_fn fn, void *user_data, uint64_t *op_id_out,
    uint64_t *sequence_out);

/** dht_value_delete without waiting: as dht_value_put_async, for the tombstone dht_value_delete writes. */
DNA_EXPORT DNA_WARN_UNUSED int dht_value_delete_async(dht_context_t *ctx, const char *identity,
    const uint8_t key[DHT_VALUE_KEY_SIZE], uint32_t slot, uint32_t lifetime_s, int timeout_ms, dht_value_done_fn fn,
    void *user_data, uint64_t *op_id_out);

/**
 * dht_value_get without waiting: fn gets the values (valid only during the call). Arguments as
 * dht_value_get; op_id_out (may be NULL): the operation's id. fn may run before this returns.
 * Returns DNA_OK (fn will be called), DNA_ERR_INVALID_ARGUMENT, DNA_ERR_CLOSED (then fn is never
 * called). Any thread, fn and dht_value_fn included.
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_value_get_async(dht_context_t *ctx, const uint8_t key[DHT_VALUE_KEY_SIZE],
    const uint8_t *signer_id, uint64_t since, int timeout_ms, dht_value_done_fn fn, void *user_data, uint64_t *op_id_out);

/* dht_value_fn's event. */
#define DHT_VALUE_CHANGED 0   /* a value newer than any known for its writer and slot (a tombstone: deleted) */
#define DHT_VALUE_EXPIRED 1   /* a known value's lifetime ended */

/**
 * Receives a listener's event: listen_id as dht_listen gave it, event DHT_VALUE_*, the value (and its
 * data) valid only during the call; user_data as given to dht_listen. Called on the context's I/O
 * thread: it must return soon; a function of the same context that waits for the network
 * (dht_value_put, dht_value_get, dht_bootstrap...) fails there with DNA_ERR_INVALID_ARGUMENT, and
 * dht_free or transport_free must not be called from it. dht_listen, dht_listen_cancel and the
 * asynchronous forms (dht_value_put_async...) may be.
 */
typedef void (*dht_value_fn)(uint64_t listen_id, int event, const dht_value_t *value, void *user_data);

/**
 * Listens to the values at key (PROTOCOL.md §10.5): the k holders closest to key push every value
 * stored or replaced there, and fn hears each value once, newer than the last it heard for that
 * writer and slot (in sequence order per slot; a write replaced before this node fetched it is
 * skipped), beginning with the values held when the listener starts; and the end of each value's
 * lifetime. signer_id (may be NULL) keeps one writer's; since keeps sequences above it. The
 * subscription is renewed every 5 minutes against the holders then closest (holders that left,
 * this node's new address). listen_id_out: (out) the listener's id. Returns DNA_OK,
 * DNA_ERR_INVALID_ARGUMENT, DNA_ERR_CLOSED. Returns at once (the first events follow).
 */
DNA_EXPORT DNA_WARN_UNUSED int dht_listen(dht_context_t *ctx, const uint8_t key[DHT_VALUE_KEY_SIZE], const uint8_t *signer_id,
    uint64_t since, dht_value_fn fn, void *user_data, uint64_t *listen_id_out);

/**
 * Stops a listener: once this returns, fn is not called for it again (called from fn itself, the
 * current call is the last; from another thread, a call of fn under way is waited for). Returns
 * DNA_OK, DNA_ERR_NOT_FOUND (no such listener of this context), DNA_ERR_INVALID_ARGUMENT. Any
 * thread, fn included.
 */
DNA_EXPORT int dht_listen_cancel(dht_context_t *ctx, uint64_t listen_id);

#ifdef __cplusplus
}
#endif

#endif /* DNATRANSPORT_DHT_VALUES_H */
