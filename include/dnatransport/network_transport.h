/*
 * network_transport.h: the message transport (seed, "Component 3"): connect to a peer by its
 * identity, then exchange encrypted, reliable, ordered messages over the best path ICE finds.
 *
 * A transport_context_t is one identity on the network: a DHT node that announces the identity's
 * signed entry (and answers STUN on its UDP port), plus its connections. transport_connect finds
 * the peer's entry in the DHT, exchanges ICE candidates with it through the DHT (docs/PROTOCOL.md
 * §5.6, §7.5), runs the ICE checks, then the handshake (§4) over the chosen path: the peer proves the
 * ML-DSA-65 key of its signed entry, both sides get fresh X25519 + ML-KEM-768 session keys. The
 * accepting side checks the connecting side's name against that side's own entry in the DHT.
 *
 * Messages (§7): up to max_message_size bytes (default 16 MiB) each, cut into fragments under a
 * conservative path MTU (datagrams of at most 1,176 bytes), acknowledged, retransmitted (RTO per RFC
 * 6298, fast retransmit), congestion-controlled (NewReno) and flow-controlled. Each stream delivers
 * its messages in order, exactly once; streams are independent, so a large message on one stream
 * never holds back a small one on another. transport_send uses stream 0. The payload is opaque: the
 * seed calls it ciphertext (the messenger's end-to-end encryption); the transport adds its own
 * encryption and authentication hop by hop.
 *
 * Liveness: a PING after 25 s without traffic (it also keeps NAT mappings). When the path stops
 * carrying anything (3 PONGs missed, or its ICE agent failed), the connecting side opens a
 * new path to the same identity (lookup, ICE, handshake) and the connection moves to it with its
 * id, losing no message (docs/PROTOCOL.md §7.7); sends queue and receives wait meanwhile. After 60 s
 * without a new path the connection is dead: transport_receive returns DNA_ERR_CLOSED once the
 * messages that arrived before are read.
 *
 * Readiness: transport_get_fd is readable (level-triggered) while transport_accept,
 * transport_receive_offline or transport_receive on some connection would return at once: a
 * connection waits to be accepted, an offline message waits, a message waits, or a connection ended (its receive reports DNA_ERR_CLOSED until it is
 * disconnected). Poll it, then call those functions with timeout_ms 0.
 *
 * Threads: any function from any thread. Each context has one I/O thread, a GLib main loop that
 * alone runs its DHT node, its ICE agents (libnice) and every connection's record layer and
 * reliability; calls hand work to it. Two helper threads wait on it without protocol state of
 * their own: a listener that answers incoming offers, and the offline inbox's poller.
 *
 * Configuration from the environment (transport_init, and NULL fields of transport_config_t):
 *   DNA_HOME             data directory (default ~/.dna): keys, node id, routing table
 *   DNA_BOOTSTRAP        comma-separated host:port of bootstrap nodes
 *   DNA_STUN_SERVER      host:port (default: the first bootstrap node; a loopback address is skipped)
 *   DNA_TURN_SERVER      host:port, with DNA_TURN_USER and DNA_TURN_PASSWORD
 *   DNA_BIND, DNA_PORT   the DHT node's UDP address and port (default: every interface, any port)
 */
#ifndef DNATRANSPORT_NETWORK_TRANSPORT_H
#define DNATRANSPORT_NETWORK_TRANSPORT_H

#include "dna_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One identity's transport (opaque). */
typedef struct transport_context_t transport_context_t;

/* Settings; a struct zeroed with memset means "everything from the environment or the default". */
typedef struct {
    const char  *data_dir;         /* NULL: $DNA_HOME or ~/.dna */
    const char **bootstrap_nodes;  /* NULL-terminated "host:port"; NULL: $DNA_BOOTSTRAP (comma-separated) */
    const char  *stun_server;      /* NULL: $DNA_STUN_SERVER, else the first bootstrap node */
    const char  *turn_server;      /* NULL: $DNA_TURN_SERVER */
    const char  *turn_username;    /* NULL: $DNA_TURN_USER */
    const char  *turn_password;    /* NULL: $DNA_TURN_PASSWORD */
    const char  *bind_ip;          /* NULL: $DNA_BIND, else every interface */
    uint16_t     port;             /* 0: $DNA_PORT, else any free port */
    /* extensions */
    int          connect_timeout_ms; /* 0: 20000; the longest transport_connect blocks */
    int          send_timeout_ms;    /* 0: 10000; the longest transport_send waits while the send buffer is full */
    size_t       max_message_size;   /* 0: TRANSPORT_DEFAULT_MAX_MESSAGE (16 MiB); at most 1 GiB; both peers need it */
    int          idle_timeout_ms;    /* 0: never; a connection that carried no message either way for this
                                        long is closed cleanly (both sides' transport_receive then report
                                        DNA_ERR_CLOSED) */
    int          resume_window_ms;   /* 0: 60000; how long a connection whose peer went silent waits
                                        for a new path (messages wait meanwhile); after it the connection
                                        ends (transport_receive: DNA_ERR_CLOSED) and what the peer's
                                        application did not take goes to its inbox (offline delivery)
                                        or back to this application (transport_take_undelivered) */
} transport_config_t;

#define TRANSPORT_DEFAULT_MAX_MESSAGE (16u * 1024u * 1024u)
/* A connection's queued, unacknowledged and not yet taken (by the peer's application) bytes;
 * transport_send waits while they would pass it (its last eighth only takes a message on a stream
 * with nothing held). */
#define TRANSPORT_SEND_BUFFER (32u * 1024u * 1024u)
/* What a peer holds for a connection of messages its application has not taken (each charged its
 * length + 64 B); a reader that stops reading stops the sender within it (docs/PROTOCOL.md §7.2). */
#define TRANSPORT_RECEIVE_BUFFER (32u * 1024u * 1024u)
/* The longest identity name (bytes of UTF-8); peer_identity_out of transport_accept needs one more. */
#define TRANSPORT_IDENTITY_MAX 255

/* PRESENCE statuses (the payload of a DNA_MSG_PRESENCE frame). */
typedef enum {
    TRANSPORT_PRESENCE_ONLINE  = 0,
    TRANSPORT_PRESENCE_AWAY    = 1,
    TRANSPORT_PRESENCE_BUSY    = 2,
    TRANSPORT_PRESENCE_OFFLINE = 3
} transport_presence_t;

/* What became of this identity's announcements in the DHT (transport_get_announce_state). Peers
 * find an identity while a holder keeps an entry it stored: for 30 minutes after that STORE. An
 * announcement no holder stored is retried after 5 s, doubling up to 5 minutes, with a warning in
 * the log each time (PROTOCOL.md §5.2). */
typedef struct {
    int      announced;        /* 1: a holder stored the entry within the last 30 minutes (peers can
                                  find this identity); 0: none did (peers refuse its connections:
                                  DNA_ERR_REFUSED at their transport_connect's caller, and cannot find it) */
    int      holders;          /* holders that stored the latest announcement any holder stored; 0: none ever */
    uint64_t stored_ms_ago;    /* milliseconds since a holder last stored it; UINT64_MAX: never */
    int      failed_attempts;  /* announcements in a row that no holder stored since then */
} transport_announce_state_t;

/**
 * Starts a transport for `identity` (seed), configured from the DNA_* environment variables: loads
 * the identity's key from the data directory (making it on first use), starts the DHT node, joins
 * through the bootstrap nodes and announces the identity's signed entry. Returns NULL on failure
 * (dna_last_error(): DNA_ERR_INVALID_ARGUMENT for a bad name or variable, DNA_ERR_IO when the port
 * cannot be bound, DNA_ERR_KEY_FILE, DNA_ERR_NAME_TAKEN when the DHT holds a live entry of the name
 * with another key ...). When no bootstrap node answers, the context still starts and the DHT
 * retries at each refresh. Free with transport_free.
 */
DNA_EXPORT transport_context_t *transport_init(const char *identity);

/** transport_init with explicit settings; config NULL or zeroed: as transport_init. */
DNA_EXPORT transport_context_t *transport_init_with_config(const char *identity, const transport_config_t *config);

/**
 * Connects to `peer_identity` (seed) and writes the new connection's id (> 0). Blocks up to
 * connect_timeout_ms. Errors: DNA_ERR_PEER_OFFLINE (no entry in the DHT, or no answer through it within 5 s:
 * entries outlive a peer that left by up to 30 minutes; transport_send_offline is then the way), DNA_ERR_UNREACHABLE (the peer answered but no path or
 * handshake worked), DNA_ERR_REFUSED (the peer completed the handshake, then refused: it found no
 * entry of this identity in the DHT, or one with another key; the log says which, and for the first
 * the context announces itself again and offers once more before giving up; see
 * transport_get_announce_state), DNA_ERR_INVALID_ARGUMENT (own identity, bad name), DNA_ERR_CLOSED
 * (the context is being freed). It returns DNA_OK only once the peer accepted the connection.
 */
DNA_EXPORT int transport_connect(transport_context_t *ctx, const char *peer_identity, int *connection_id_out);

/**
 * Takes the next incoming connection, waiting up to timeout_ms (0: do not wait; negative: forever).
 * Writes its id and the peer's identity (verified: it proved the key of its own signed DHT entry) as
 * a NUL-terminated string into peer_identity_out (TRANSPORT_IDENTITY_MAX + 1 bytes always suffice;
 * DNA_ERR_BUFFER_TOO_SMALL otherwise, and the connection stays queued). DNA_ERR_TIMEOUT if none came.
 */
DNA_EXPORT int transport_accept(transport_context_t *ctx, int *connection_id_out, char *peer_identity_out,
                     size_t peer_identity_cap, int timeout_ms);

/**
 * Queues a message on stream 0 (seed) and returns: DNA_OK means queued, not yet delivered. The bytes
 * are copied. While the connection's send buffer (TRANSPORT_SEND_BUFFER bytes queued, unacknowledged,
 * or not yet taken by the peer's application) cannot take the message, waits up to send_timeout_ms, then DNA_ERR_TIMEOUT (backpressure:
 * nothing was queued, try later). The send buffer drains only as the peer's application reads: the
 * peer holds at most TRANSPORT_RECEIVE_BUFFER of messages it has not taken with transport_receive,
 * so a peer that stops reading makes transport_send time out once both buffers are full; a small
 * message on another stream still passes (docs/PROTOCOL.md §7.2). DNA_ERR_TOO_LARGE above max_message_size; DNA_ERR_CLOSED when the
 * connection ended; DNA_ERR_NOT_FOUND for an unknown connection id. An empty message is allowed.
 * While the path is being re-established messages wait. When the connection dies with messages the
 * peer never acknowledged (it was killed and restarted, stayed away past the 60 s resume window, or
 * closed meanwhile), those of at most TRANSPORT_OFFLINE_MAX bytes go to its inbox as with
 * transport_send_offline (docs/PROTOCOL.md §7.8): at least once at that boundary.
 */
DNA_EXPORT int transport_send(transport_context_t *ctx, int connection_id, const uint8_t *ciphertext, size_t ciphertext_len);

/** transport_send on stream `stream` (any value; each stream is ordered on its own). */
DNA_EXPORT int transport_send_stream(transport_context_t *ctx, int connection_id, uint32_t stream,
                          const uint8_t *data, size_t data_len);

/**
 * The next message of the connection, from any stream, in each stream's order (seed); the streams
 * with messages waiting take turns, one message each (docs/PROTOCOL.md §7.2). Taking a message
 * frees its room in the receive window (TRANSPORT_RECEIVE_BUFFER). Waits up to
 * timeout_ms (0: do not wait; negative: forever). *ciphertext_out is a new buffer of
 * *ciphertext_len_out bytes (NULL for an empty message), freed with dna_buffer_free. DNA_ERR_TIMEOUT
 * if none came; DNA_ERR_CLOSED once the connection ended (the peer disconnected or went silent) and
 * every message that arrived before was read.
 */
DNA_EXPORT int transport_receive(transport_context_t *ctx, int connection_id, uint8_t **ciphertext_out,
                      size_t *ciphertext_len_out, int timeout_ms);

/** transport_receive that also tells the message's stream (stream_out may be NULL). */
DNA_EXPORT int transport_receive_stream(transport_context_t *ctx, int connection_id, uint32_t *stream_out,
                             uint8_t **data_out, size_t *data_len_out, int timeout_ms);

/**
 * transport_receive into the caller's buffer, which it can reuse: no memory is allocated per
 * message (on 1 MiB messages the new buffers of transport_receive and their page faults cost a
 * fifth of the receiver's CPU, bench/iroh_compare.py). buffer: (out) capacity bytes (NULL only with
 * capacity 0). *len_out: (out) the message's length; with DNA_ERR_BUFFER_TOO_SMALL the length it
 * needs, and the message stays queued, the next to be received. stream_out: (out, optional) its
 * stream. Waits as transport_receive (timeout_ms 0: do not wait; negative: forever); returns what it
 * returns, and DNA_ERR_BUFFER_TOO_SMALL.
 */
DNA_EXPORT int transport_receive_into(transport_context_t *ctx, int connection_id, uint32_t *stream_out,
                                      uint8_t *buffer, size_t capacity, size_t *len_out, int timeout_ms);

/**
 * Hands back, one per call, the messages an ended connection did not deliver (docs/PROTOCOL.md
 * §7.8): a message sent with DNA_OK is delivered (the peer's application took it), stored in the
 * peer's inbox, or returned here, never dropped without a word. When a connection ends (its peer
 * gone past the resume window, restarted, or closed it), what the peer's application had not taken
 * goes to the peer's inbox if all of it fits there (at most 32 messages of at most
 * TRANSPORT_OFFLINE_MAX bytes); otherwise, and whatever no holder stored, it waits here. So do the
 * messages transport_disconnect could not flush (it then returns DNA_ERR_TIMEOUT). Each stream's
 * messages come in the order they were sent; *stream_out (may be NULL) tells the stream;
 * *data_out is a new buffer of *data_len_out bytes (NULL for an empty message) for dna_buffer_free.
 * A message the peer took just before it died may be among them (its report died with it: at
 * least once). Waits up to timeout_ms (0: do not wait; negative: forever) while the connection's
 * messages are still being stored offline: DNA_ERR_TIMEOUT. DNA_ERR_NOT_FOUND when there is none
 * (more), or the connection never had any. The id stays valid for this call after
 * transport_disconnect; messages never taken are dropped at transport_free, with a warning.
 */
DNA_EXPORT int transport_take_undelivered(transport_context_t *ctx, int connection_id, uint32_t *stream_out,
                                          uint8_t **data_out, size_t *data_len_out, int timeout_ms);

/* The largest message transport_send_offline takes. */
#define TRANSPORT_OFFLINE_MAX 4096

/**
 * Stores a message for `peer_identity` in the DHT, for when it cannot be reached (docs/PROTOCOL.md
 * §8): sealed to the peer's inbox keys (X25519 + ML-KEM-768, published by the peer while online)
 * so that only the peer can read it, signed by this identity, kept for 7 days by the k nodes
 * closest to the peer's inbox key (bootstrap nodes keep none), at most 32 messages per sender per
 * inbox on each node. Blocks for the lookups. The peer receives it with transport_receive_offline
 * when it next comes online. Errors: DNA_ERR_TOO_LARGE above TRANSPORT_OFFLINE_MAX bytes;
 * DNA_ERR_PEER_OFFLINE when the peer has no inbox in the DHT (it never came online, or not for 7
 * days); DNA_ERR_UNREACHABLE when no node stored it (all full, or none reachable).
 */
DNA_EXPORT int transport_send_offline(transport_context_t *ctx, const char *peer_identity,
                                      const uint8_t *ciphertext, size_t ciphertext_len);

/**
 * The next message that waited for this identity in the DHT, waiting up to timeout_ms (0: do not
 * wait; negative: forever). The context fetches its inbox at start, every minute and on
 * transport_fetch_offline; each message is opened, checked (the sender's signature; its name against
 * its live DHT entry when it has one) and handed out exactly once, in the order they were sent (a
 * message that only a late-answering holder keeps comes when that holder's page does), also
 * across restarts (the ids of handed-out messages are kept in the data directory until they
 * expire); then the holders are told to delete it. Writes the sender's identity (NUL-terminated;
 * TRANSPORT_IDENTITY_MAX + 1 bytes always suffice, else DNA_ERR_BUFFER_TOO_SMALL and the message
 * stays queued), a new buffer with the message (freed with dna_buffer_free; NULL when empty) and,
 * when sent_at_out is not NULL, when it was sent (Unix seconds, the sender's clock). The readiness
 * fd is readable while such a message waits. DNA_ERR_TIMEOUT if none.
 */
DNA_EXPORT int transport_receive_offline(transport_context_t *ctx, char *sender_out, size_t sender_cap,
                                         uint8_t **data_out, size_t *data_len_out, uint64_t *sent_at_out,
                                         int timeout_ms);

/** Fetches the inbox now and waits for it; returns how many new messages are queued (>= 0). */
DNA_EXPORT int transport_fetch_offline(transport_context_t *ctx);

/** The readiness descriptor (see above); owned by the context: do not close it. */
DNA_EXPORT int transport_get_fd(transport_context_t *ctx);

/** Pushes this side's presence (a transport_presence_t) to every connected peer and to later ones. */
DNA_EXPORT int transport_set_presence(transport_context_t *ctx, int status);

/**
 * Writes what became of this identity's announcements in the DHT (see transport_announce_state_t):
 * an application can show "not reachable yet" while announced is 0 instead of learning it from
 * its peers' refusals. DNA_ERR_CLOSED while the context is being freed.
 */
DNA_EXPORT int transport_get_announce_state(transport_context_t *ctx, transport_announce_state_t *state_out);

/** The peer's last pushed presence (TRANSPORT_PRESENCE_ONLINE until it pushes one). */
DNA_EXPORT int transport_get_presence(transport_context_t *ctx, int connection_id, int *status_out);

/**
 * Ends a connection (seed): waits up to send_timeout_ms (default 10 s) for its queued messages to
 * be acknowledged, tells the peer (whose transport_receive then returns DNA_ERR_CLOSED after the
 * last message), releases the path. DNA_ERR_TIMEOUT when some were not acknowledged by then: the
 * connection ended all the same, and transport_take_undelivered hands them back. The id is invalid
 * afterwards (but for transport_take_undelivered). DNA_ERR_NOT_FOUND for an unknown id.
 */
DNA_EXPORT int transport_disconnect(transport_context_t *ctx, int connection_id);

/** Ends every connection and the DHT node, frees the context (seed). NULL is ignored. */
DNA_EXPORT void transport_free(transport_context_t *ctx);

#ifdef __cplusplus
}
#endif

#endif /* DNATRANSPORT_NETWORK_TRANSPORT_H */
