/*
 * p2p_protocol.h: the DNA message frame (seed, "Message Frame Format"): a 32-byte header in network
 * byte order followed by the payload. The byte layout and test vectors are in docs/PROTOCOL.md.
 *
 * Threads: these functions keep no state; call them from any thread at the same time.
 */
#ifndef DNATRANSPORT_P2P_PROTOCOL_H
#define DNATRANSPORT_P2P_PROTOCOL_H

#include "dna_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DNA_FRAME_MAGIC       0x444E4120u /* "DNA " */
#define DNA_FRAME_VERSION     0x0100      /* v1.0 */
#define DNA_FRAME_HEADER_SIZE 32
/* The largest payload p2p_frame_decode accepts (16 MiB); see p2p_frame_decode_with_limit. */
#define DNA_FRAME_MAX_PAYLOAD (16u * 1024u * 1024u)

typedef enum {
    DNA_MSG_DATA      = 0x0001,  /* Encrypted message */
    DNA_MSG_ACK       = 0x0002,  /* Acknowledgment */
    DNA_MSG_PING      = 0x0003,  /* Keepalive ping */
    DNA_MSG_PONG      = 0x0004,  /* Keepalive pong */
    DNA_MSG_PRESENCE  = 0x0005,  /* Online status update */
    /* Extensions (docs/PROTOCOL.md): */
    DNA_MSG_HANDSHAKE     = 0x0010,  /* a piece of a handshake message (dna_session.h) */
    DNA_MSG_HANDSHAKE_ACK = 0x0011,  /* which pieces of a handshake message arrived */
    DNA_MSG_DHT           = 0x0020,  /* a piece of a DHT message (dht_discovery.h) */
    DNA_MSG_CLOSE         = 0x0030   /* the sender closed the connection (network_transport.h) */
} dna_message_type_t;

/* A decoded header; fields in host byte order, reserved bytes as on the wire. */
typedef struct {
    uint32_t magic;           /* DNA_FRAME_MAGIC */
    uint16_t version;         /* DNA_FRAME_VERSION */
    uint16_t type;            /* dna_message_type_t */
    uint32_t sequence;        /* sender's counter */
    uint32_t payload_length;  /* bytes after the header */
    uint32_t checksum;        /* CRC-32 (IEEE, as zlib's crc32) of the payload */
    uint8_t  reserved[12];    /* future use; carried unchanged */
} dna_frame_header_t;

/** DNA_FRAME_HEADER_SIZE, for bindings. Any thread. */
DNA_EXPORT size_t p2p_frame_header_size(void);

/** DNA_FRAME_MAX_PAYLOAD (the default decoding limit), for bindings. Any thread. */
DNA_EXPORT size_t p2p_frame_max_payload(void);

/**
 * Writes a frame (header + payload) of the given type and sequence into out; reserved bytes are 0.
 * payload: (in) payload_len bytes, may be NULL when payload_len is 0; must not overlap out.
 * out: (out) out_capacity bytes. *frame_len_out: (out) the frame length, or the needed size when
 * out is too small. Returns DNA_OK, DNA_ERR_BUFFER_TOO_SMALL, DNA_ERR_UNKNOWN_TYPE,
 * DNA_ERR_TOO_LARGE (payload above 2^32-1 bytes), DNA_ERR_INVALID_ARGUMENT. Any thread.
 */
DNA_EXPORT DNA_WARN_UNUSED int p2p_frame_encode(uint16_t type, uint32_t sequence,
    const uint8_t *payload, size_t payload_len,
    uint8_t *out, size_t out_capacity, size_t *frame_len_out);

/**
 * Decodes one frame that fills frame_len bytes exactly, payload limit DNA_FRAME_MAX_PAYLOAD.
 * header_out: (out) the header. payload_out: (out, optional) points into frame (valid as long as
 * frame), NULL is allowed. Returns DNA_OK or, checked in this order, DNA_ERR_TRUNCATED,
 * DNA_ERR_BAD_MAGIC, DNA_ERR_BAD_VERSION, DNA_ERR_UNKNOWN_TYPE, DNA_ERR_TOO_LARGE,
 * DNA_ERR_LENGTH_MISMATCH, DNA_ERR_CHECKSUM; DNA_ERR_INVALID_ARGUMENT for NULL. Any thread.
 */
DNA_EXPORT DNA_WARN_UNUSED int p2p_frame_decode(const uint8_t *frame, size_t frame_len,
    dna_frame_header_t *header_out, const uint8_t **payload_out);

/**
 * p2p_frame_decode with another payload limit: max_payload bytes (at most 2^32-1; larger is clamped).
 * Same outputs and codes as p2p_frame_decode. Any thread.
 */
DNA_EXPORT DNA_WARN_UNUSED int p2p_frame_decode_with_limit(const uint8_t *frame, size_t frame_len,
    size_t max_payload, dna_frame_header_t *header_out, const uint8_t **payload_out);

#ifdef __cplusplus
}
#endif

#endif /* DNATRANSPORT_P2P_PROTOCOL_H */
