/*
 * dna_session.h: the post-quantum secure channel, without I/O. A handshake (docs/PROTOCOL.md §4)
 * authenticates both identities with ML-DSA-65 and agrees keys with X25519 + ML-KEM-768; a session
 * then seals and opens DNA frames (anti-replay window; §3) with the AEAD the handshake chose: AES-256-GCM
 * where both CPUs have AES instructions, else ChaCha20-Poly1305 (§4).
 *
 * The library sends nothing here: the caller moves datagrams. Feed each datagram received from the
 * peer to dna_handshake_receive; send every datagram dna_handshake_next_datagram gives (none is
 * larger than DNA_MAX_DATAGRAM); call dna_handshake_handle_timeout at dna_handshake_next_deadline.
 * Times are milliseconds of any monotonic clock the caller chooses (e.g. CLOCK_MONOTONIC).
 * A session carries one sealed frame per datagram: its handshake neither offers nor accepts the
 * records sharing a datagram that the transport's connections use between current peers (§3, §4.2).
 *
 * Threads: any function from any thread; a handle may be used by several threads at once (each
 * call holds the handle's lock).
 */
#ifndef DNATRANSPORT_DNA_SESSION_H
#define DNATRANSPORT_DNA_SESSION_H

#include "dna_common.h"
#include "dna_identity.h"
#include "p2p_protocol.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DNA_MAX_DATAGRAM      1200  /* no datagram the library sends is larger */
#define DNA_SESSION_OVERHEAD  48    /* a sealed frame is the plaintext plus the header and a 16-byte tag */
#define DNA_PEER_MAX          255   /* longest peer address string, without its NUL */

/* A handshake in progress: one initiator, or a responder for any number of peers (opaque). */
typedef struct dna_handshake_t dna_handshake_t;
/* An established session: the record keys of both directions (opaque). */
typedef struct dna_session_t dna_session_t;

/** DNA_MAX_DATAGRAM, for bindings. Any thread. */
DNA_EXPORT size_t dna_max_datagram(void);

/** DNA_SESSION_OVERHEAD, for bindings. Any thread. */
DNA_EXPORT size_t dna_session_overhead(void);

/**
 * Starts a handshake as initiator, to the peer whose name and ML-DSA-65 public key the caller
 * knows (from its verified DHT entry, see dht_find_peer_entry). identity: (in) the local identity,
 * still owned by the caller (the handshake keeps its own reference). peer_identity: (in) the
 * peer's name, reported by the session. peer_public_key: (in) DNA_PUBLIC_KEY_SIZE bytes.
 * now_ms: the caller's clock. The first datagrams are ready at once. Returns a handle to free with
 * dna_handshake_free(), or NULL with dna_last_error(): DNA_ERR_INVALID_ARGUMENT (NULL, bad name or
 * malformed key), DNA_ERR_INTERNAL.
 */
DNA_EXPORT dna_handshake_t *dna_handshake_initiate(const dna_identity_t *identity, const char *peer_identity,
    const uint8_t *peer_public_key, size_t peer_public_key_len, uint64_t now_ms);

/**
 * Starts a responder that answers handshakes addressed to identity's key from any number of peers.
 * At most 128 handshakes are in progress at once (a new one evicts the oldest), so a flood of
 * initiations cannot grow memory. Returns a handle (dna_handshake_free), or NULL with
 * dna_last_error(): DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT dna_handshake_t *dna_handshake_respond(const dna_identity_t *identity);

/**
 * Feeds one datagram received from the peer. peer: (in) the sender's address as a string of your
 * choice, 1..DNA_PEER_MAX bytes (e.g. "192.0.2.7:4567"); a responder tells handshakes apart by it;
 * an initiator ignores it (may be NULL). Returns DNA_OK; or, with nothing else changed, an error
 * about this datagram: DNA_ERR_CHECKSUM and the other frame codes, DNA_ERR_PROTOCOL (not a valid
 * handshake message), DNA_ERR_NOT_FOUND (for no handshake in progress), DNA_ERR_REPLAYED,
 * DNA_ERR_MISDIRECTED (meant for another key); or an error that ended that peer's handshake:
 * DNA_ERR_BAD_SIGNATURE, DNA_ERR_AUTHENTICATION, DNA_ERR_PROTOCOL. A responder keeps serving
 * other peers whatever it returns.
 */
DNA_EXPORT DNA_WARN_UNUSED int dna_handshake_receive(dna_handshake_t *handshake, const char *peer,
    const uint8_t *datagram, size_t datagram_len, uint64_t now_ms);

/**
 * Takes the next datagram to send. out: (out) out_capacity bytes (DNA_MAX_DATAGRAM always
 * suffices). *len_out: (out) its length, or the needed size with DNA_ERR_BUFFER_TOO_SMALL (the
 * datagram stays queued). peer_out: (out, optional for an initiator) the destination given to
 * dna_handshake_receive, NUL-terminated, at most DNA_PEER_MAX + 1 bytes. Returns DNA_OK,
 * DNA_ERR_NOT_FOUND (nothing to send), DNA_ERR_BUFFER_TOO_SMALL, DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int dna_handshake_next_datagram(dna_handshake_t *handshake, uint8_t *out,
    size_t out_capacity, size_t *len_out, char *peer_out, size_t peer_capacity);

/**
 * Runs the timers due at now_ms: pieces not acknowledged are sent again (only those), handshakes
 * past their time (15 s) end. Returns DNA_OK, DNA_ERR_TIMEOUT (an initiator's handshake ended
 * unanswered), DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int dna_handshake_handle_timeout(dna_handshake_t *handshake, uint64_t now_ms);

/**
 * *deadline_ms_out: (out) when dna_handshake_handle_timeout must next run. Returns DNA_OK,
 * DNA_ERR_NOT_FOUND (no timer: nothing in progress), DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int dna_handshake_next_deadline(dna_handshake_t *handshake, uint64_t *deadline_ms_out);

/**
 * *count_out: (out) handshakes in progress: for an initiator 1 until the responder has all of its
 * last message (or the handshake failed), then 0; for a responder the number of peers it is
 * talking to. Returns DNA_OK, DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int dna_handshake_pending(dna_handshake_t *handshake, size_t *count_out);

/**
 * Takes an established session. An initiator has one after one round trip (it may seal data at
 * once, while it keeps delivering its last message: keep feeding it); a responder has one per
 * finished handshake. *session_out: (out) a handle to free with dna_session_free(). peer_out:
 * (out, optional) the peer's address string, as for dna_handshake_next_datagram. Returns DNA_OK,
 * DNA_ERR_NOT_FOUND (none yet), DNA_ERR_BUFFER_TOO_SMALL (peer_out; the session stays queued),
 * DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int dna_handshake_take_session(dna_handshake_t *handshake, dna_session_t **session_out,
    char *peer_out, size_t peer_capacity);

/** Frees a handshake and erases its ephemeral secrets; NULL or a freed handle does nothing. */
DNA_EXPORT void dna_handshake_free(dna_handshake_t *handshake);

/**
 * The authenticated peer: identity_out (out) its name, NUL-terminated (DNA_IDENTITY_MAX + 1 bytes
 * suffice); public_key_out (out) its DNA_PUBLIC_KEY_SIZE-byte ML-DSA-65 key. The key is proven by
 * the handshake; the name is the peer's claim until checked against its DHT entry or a pinned key.
 * Returns DNA_OK, DNA_ERR_BUFFER_TOO_SMALL, DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int dna_session_peer(dna_session_t *session, char *identity_out, size_t identity_capacity,
    uint8_t *public_key_out, size_t public_key_capacity);

/**
 * Seals plaintext into one DNA frame of the given type (plaintext_len + DNA_SESSION_OVERHEAD bytes)
 * for the peer. *len_out: (out) the frame length, or the needed size with DNA_ERR_BUFFER_TOO_SMALL
 * (nothing consumed). Returns DNA_OK, DNA_ERR_BUFFER_TOO_SMALL, DNA_ERR_UNKNOWN_TYPE,
 * DNA_ERR_TOO_LARGE, DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int dna_session_seal(dna_session_t *session, uint16_t type, const uint8_t *plaintext,
    size_t plaintext_len, uint8_t *out, size_t out_capacity, size_t *len_out);

/**
 * Opens a frame the peer sealed. header_out: (out, optional) its header. out: (out) the plaintext;
 * *len_out: (out) its length, or the needed size with DNA_ERR_BUFFER_TOO_SMALL (nothing consumed,
 * the frame can be opened again). A frame opens at most once: a replay or duplicate gives
 * DNA_ERR_REPLAYED (checked first, without decrypting: any frame whose sequence number was already
 * accepted, or is 2048 or more behind the newest, is refused so). Returns DNA_OK, DNA_ERR_AUTHENTICATION (modified, forged or another session's),
 * DNA_ERR_REPLAYED, the frame codes (DNA_ERR_CHECKSUM, ...), DNA_ERR_BUFFER_TOO_SMALL,
 * DNA_ERR_INVALID_ARGUMENT, or DNA_ERR_CLOSED for every frame once more forged frames were refused
 * than the cipher suite's integrity limit (2^36 or 2^52, docs/PROTOCOL.md §3): handshake again.
 */
DNA_EXPORT DNA_WARN_UNUSED int dna_session_open(dna_session_t *session, const uint8_t *frame, size_t frame_len,
    dna_frame_header_t *header_out, uint8_t *out, size_t out_capacity, size_t *len_out);

/** Frees a session and erases its keys; NULL or a freed handle does nothing. */
DNA_EXPORT void dna_session_free(dna_session_t *session);

#ifdef __cplusplus
}
#endif

#endif /* DNATRANSPORT_DNA_SESSION_H */
