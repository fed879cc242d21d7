/*
 * nat_traversal.h: NAT traversal (seed, "Component 2"): ICE (RFC 8445) over libnice, with STUN for
 * server-reflexive candidates and TURN (RFC 8656, over UDP or TCP) as the fallback relay.
 *
 * A nat_traversal_context_t is one ICE agent with one stream of one component, and one I/O thread
 * that runs libnice's GLib main loop. The calls below hand work to that thread and wait for it.
 *
 * The flow, on both peers (the candidates and credentials travel by any signaling channel; the
 * transport uses the DHT):
 *   ctx = nat_traversal_init("stun.example:3478");
 *   nat_set_turn_server(ctx, "turn.example:3478", "user", "password");   (optional)
 *   nat_set_controlling(ctx, 1);                  (exactly one of the two peers)
 *   nat_gather_candidates(ctx, cands, &n);        (send cands and nat_get_local_credentials)
 *   nat_set_remote_credentials(ctx, ufrag, pwd);  (what the peer sent)
 *   nat_add_remote_candidate(ctx, &c);            (for each of the peer's candidates)
 *   nat_establish_connection(ctx, &fd);           (send/recv/poll whole datagrams on fd)
 *
 * The seed's ice_candidate_t carries an address, a port and a type only. What ICE needs besides is
 * derived from them on both sides (docs/PROTOCOL.md §6): priority = 2^24 * type preference (host 126,
 * server-reflexive 100, relayed 0) + 2^8 * local preference (65535 for the first candidate of a
 * type, one less for each next one, in the order given) + 255 (component 1); foundation = the type
 * and the address; transport UDP (a relayed candidate is a UDP address on the TURN server even when
 * this peer reaches the server over TCP); credentials from nat_set_remote_credentials.
 *
 * Threads: any function from any thread; calls on one context are serialized.
 */
#ifndef DNATRANSPORT_NAT_TRAVERSAL_H
#define DNATRANSPORT_NAT_TRAVERSAL_H

#include "dna_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* An ICE agent (opaque): one stream, one component, one I/O thread. */
typedef struct nat_traversal_context_t nat_traversal_context_t;

/* The seed's candidate, verbatim. ip is NUL-terminated IPv4 or IPv6 text. CANDIDATE_LOCAL is a host
   candidate; CANDIDATE_REFLEXIVE a server- (or, from nat_get_selected_pair, peer-) reflexive one;
   CANDIDATE_RELAY an address allocated on the TURN server. */
typedef struct {
    char ip[46];
    uint16_t port;
    enum { CANDIDATE_LOCAL, CANDIDATE_REFLEXIVE, CANDIDATE_RELAY } type;
} ice_candidate_t;

/* The most candidates nat_gather_candidates gives (host addresses, one reflexive, one relayed). */
#define NAT_MAX_CANDIDATES 32
/* ufrag and pwd buffers of nat_get_local_credentials need this many bytes. */
#define NAT_CREDENTIAL_MAX 257
/* nat_establish_connection gives up after this many milliseconds unless nat_set_timeout says otherwise. */
#define NAT_DEFAULT_TIMEOUT_MS 10000
/* The largest datagram the fd of nat_establish_connection carries. */
#define NAT_MAX_DATAGRAM 65000

/**
 * Starts an ICE agent (seed) and its I/O thread. stun_server: (in, optional) "host:port" ("[v6]:port";
 * names are resolved) of a STUN server for server-reflexive candidates, or NULL for none. When the
 * TURN server is on the same address, the reflexive candidate comes from the TURN allocation instead
 * (one request less). Returns a context to free with nat_traversal_free(), or NULL with
 * dna_last_error(): DNA_ERR_INVALID_ARGUMENT (unparsable or unresolvable server), DNA_ERR_IO.
 */
DNA_EXPORT nat_traversal_context_t *nat_traversal_init(const char *stun_server);

/**
 * Sets the TURN server used for relayed candidates, with long-term credentials (RFC 8656). server:
 * (in) "host:port". The agent asks it over UDP and over TCP (the TCP allocation is used when UDP is
 * blocked). Call before nat_gather_candidates. Returns DNA_OK, DNA_ERR_INVALID_ARGUMENT (NULL,
 * unparsable server, empty or over 256-byte username or password, after gathering started).
 */
DNA_EXPORT DNA_WARN_UNUSED int nat_set_turn_server(nat_traversal_context_t *ctx, const char *server,
    const char *username, const char *password);

/**
 * Chooses the ICE role: controlling (1) or controlled (0, the default). Exactly one of the two
 * peers must be controlling (a conflict is repaired by ICE, at the cost of a round trip).
 * Call before nat_establish_connection. Returns DNA_OK, DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int nat_set_controlling(nat_traversal_context_t *ctx, int controlling);

/**
 * Bounds nat_establish_connection: it returns DNA_ERR_UNREACHABLE at most timeout_ms (100..600000)
 * after it is called. Default NAT_DEFAULT_TIMEOUT_MS. Returns DNA_OK, DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int nat_set_timeout(nat_traversal_context_t *ctx, int timeout_ms);

/**
 * Copies the agent's ICE username fragment and password (random, made at init) as NUL-terminated
 * text. ufrag_cap, pwd_cap: bytes at ufrag_out, pwd_out (NAT_CREDENTIAL_MAX is always enough).
 * Returns DNA_OK, DNA_ERR_BUFFER_TOO_SMALL, DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int nat_get_local_credentials(nat_traversal_context_t *ctx,
    char *ufrag_out, size_t ufrag_cap, char *pwd_out, size_t pwd_cap);

/**
 * Sets the peer's ICE username fragment and password (4..256 printable ASCII bytes each). Returns
 * DNA_OK, DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int nat_set_remote_credentials(nat_traversal_context_t *ctx, const char *ufrag,
    const char *pwd);

/**
 * Gathers the local candidates (seed): host addresses, the server-reflexive address from the STUN
 * server and the relayed address from the TURN server, and waits until gathering is done (at most
 * about 3 s: an unanswered server is left out). candidates: (out) an array of *count entries.
 * count: (in) capacity, (out) number of candidates, highest priority first. Gathering happens once:
 * later calls give the same candidates. Returns DNA_OK, DNA_ERR_BUFFER_TOO_SMALL (*count then says
 * how many there are; the first capacity were written), DNA_ERR_IO (no usable local address),
 * DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int nat_gather_candidates(nat_traversal_context_t *ctx, ice_candidate_t *candidates,
    size_t *count);

/**
 * Adds one of the peer's candidates (seed), as the peer's nat_gather_candidates gave it, in that
 * order (the order sets the local preference, see above). Candidates may also arrive after
 * nat_establish_connection started (trickle). Returns DNA_OK, DNA_ERR_INVALID_ARGUMENT (bad address,
 * port 0, unknown type, more than NAT_MAX_CANDIDATES).
 */
DNA_EXPORT DNA_WARN_UNUSED int nat_add_remote_candidate(nat_traversal_context_t *ctx, const ice_candidate_t *candidate);

/**
 * Runs the connectivity checks (seed) and blocks until a candidate pair works or the checks fail.
 * Call after nat_gather_candidates and nat_set_remote_credentials; the remote candidates added so far
 * are taken as complete once the timeout passes or all checks failed. socket_fd_out: (out) a file
 * descriptor (an AF_UNIX datagram socket) that carries whole datagrams of up to NAT_MAX_DATAGRAM
 * bytes to and from the peer over the selected path, direct or relayed: send() one, recv() one,
 * poll() for POLLIN. Datagrams may be lost or reordered, as with UDP. The caller owns the fd and
 * closes it with close(); after nat_traversal_free, send() fails with ECONNREFUSED.
 * Returns DNA_OK, DNA_ERR_UNREACHABLE (the checks failed or the timeout passed), DNA_ERR_INVALID_ARGUMENT
 * (no candidates gathered or no remote credentials; already established), DNA_ERR_IO.
 */
DNA_EXPORT DNA_WARN_UNUSED int nat_establish_connection(nat_traversal_context_t *ctx, int *socket_fd_out);

/**
 * Tells which path won: local and remote: (out) the selected pair's candidates (a local relayed
 * candidate means the path goes through TURN). Returns DNA_OK, DNA_ERR_NOT_FOUND (no pair selected
 * yet), DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int nat_get_selected_pair(nat_traversal_context_t *ctx, ice_candidate_t *local,
    ice_candidate_t *remote);

/**
 * Releases the TURN allocation (waits up to 1 s for the server), stops the I/O thread and frees the
 * context (seed). NULL does nothing. Do not call it from a log callback.
 */
DNA_EXPORT void nat_traversal_free(nat_traversal_context_t *ctx);

#ifdef __cplusplus
}
#endif

#endif /* DNATRANSPORT_NAT_TRAVERSAL_H */
