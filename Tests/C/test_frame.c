/* The frame codec through the C ABI: the shared vectors, every error code, argument checks. */
#include <dnatransport.h>
#include <stdint.h>
#include "check.h"
#include "vectors.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static void test_valid_vectors(void) {
    size_t i;
    for (i = 0; i < COUNT(VALID_VECTORS); i++) {
        const struct valid_vector *v = &VALID_VECTORS[i];
        unsigned char payload[256], expected[512], out[512], reserved[12];
        size_t payload_len = from_hex(v->payload, payload, sizeof payload);
        size_t frame_len = from_hex(v->frame, expected, sizeof expected);
        size_t written = 0;
        dna_frame_header_t header;
        const uint8_t *body = NULL;
        from_hex(v->reserved, reserved, sizeof reserved);

        /* The C encoder writes zero reserved bytes: compare all but those when the vector sets them. */
        CHECK_EQ_INT(p2p_frame_encode(v->type, v->sequence, payload, payload_len, out, sizeof out, &written), DNA_OK);
        CHECK_EQ_INT(written, frame_len);
        CHECK(memcmp(out, expected, 20) == 0);
        CHECK(memcmp(out + 32, expected + 32, payload_len) == 0);

        memset(&header, 0, sizeof header);
        CHECK_EQ_INT(p2p_frame_decode(expected, frame_len, &header, &body), DNA_OK);
        CHECK_EQ_INT(header.magic, DNA_FRAME_MAGIC);
        CHECK_EQ_INT(header.version, DNA_FRAME_VERSION);
        CHECK_EQ_INT(header.type, v->type);
        CHECK_EQ_INT(header.sequence, v->sequence);
        CHECK_EQ_INT(header.payload_length, payload_len);
        CHECK_EQ_INT(header.checksum, v->checksum);
        CHECK(memcmp(header.reserved, reserved, 12) == 0);
        CHECK(body == expected + DNA_FRAME_HEADER_SIZE);
        CHECK(memcmp(body, payload, payload_len) == 0);
    }
}

static void test_invalid_vectors(void) {
    size_t i;
    for (i = 0; i < COUNT(INVALID_VECTORS); i++) {
        unsigned char frame[512];
        size_t len = from_hex(INVALID_VECTORS[i].frame, frame, sizeof frame);
        dna_frame_header_t header;
        int rc = p2p_frame_decode(len ? frame : (const uint8_t *)"", len, &header, NULL);
        if (rc != INVALID_VECTORS[i].error) fprintf(stderr, "vector %s\n", INVALID_VECTORS[i].name);
        CHECK_EQ_INT(rc, INVALID_VECTORS[i].error);
        CHECK_EQ_INT(dna_last_error(), INVALID_VECTORS[i].error);
    }
}

static void test_encode_arguments(void) {
    uint8_t payload[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    uint8_t out[64];
    size_t len = 0;
    /* Too small: the needed size is reported; NULL with capacity 0 asks for the size. */
    CHECK_EQ_INT(p2p_frame_encode(DNA_MSG_DATA, 1, payload, 10, out, 41, &len), DNA_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ_INT(len, 42);
    len = 0;
    CHECK_EQ_INT(p2p_frame_encode(DNA_MSG_DATA, 1, payload, 10, NULL, 0, &len), DNA_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ_INT(len, 42);
    CHECK_EQ_INT(p2p_frame_encode(DNA_MSG_DATA, 1, payload, 10, out, 42, &len), DNA_OK);
    CHECK_EQ_INT(len, 42);
    /* Empty payload with NULL is fine. */
    CHECK_EQ_INT(p2p_frame_encode(DNA_MSG_PING, 2, NULL, 0, out, sizeof out, &len), DNA_OK);
    CHECK_EQ_INT(len, DNA_FRAME_HEADER_SIZE);
    /* Bad arguments. */
    CHECK_EQ_INT(p2p_frame_encode(DNA_MSG_DATA, 1, NULL, 10, out, sizeof out, &len), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(p2p_frame_encode(DNA_MSG_DATA, 1, payload, 10, NULL, 64, &len), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(p2p_frame_encode(DNA_MSG_DATA, 1, payload, 10, out, sizeof out, NULL), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(p2p_frame_encode(DNA_MSG_DATA, 1, payload, (size_t)-1, out, sizeof out, &len), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(p2p_frame_encode(0, 1, payload, 10, out, sizeof out, &len), DNA_ERR_UNKNOWN_TYPE);
    CHECK_EQ_INT(p2p_frame_encode(6, 1, payload, 10, out, sizeof out, &len), DNA_ERR_UNKNOWN_TYPE);
    CHECK_EQ_INT(p2p_frame_encode(DNA_MSG_DATA, 1, out + 8, 10, out, sizeof out, &len), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_INVALID_ARGUMENT);
}

static void test_decode_arguments_and_limit(void) {
    uint8_t payload[100], frame[200];
    size_t len = 0;
    dna_frame_header_t header;
    const uint8_t *body = NULL;
    memset(payload, 0x5a, sizeof payload);
    CHECK_EQ_INT(p2p_frame_encode(DNA_MSG_DATA, 7, payload, 100, frame, sizeof frame, &len), DNA_OK);
    CHECK_EQ_INT(p2p_frame_decode(NULL, len, &header, &body), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(p2p_frame_decode(NULL, 0, &header, &body), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(p2p_frame_decode(frame, len, NULL, &body), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(p2p_frame_decode(frame, (size_t)-1, &header, &body), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(p2p_frame_decode(frame, len, &header, NULL), DNA_OK);
    CHECK_EQ_INT(p2p_frame_decode_with_limit(frame, len, 99, &header, &body), DNA_ERR_TOO_LARGE);
    CHECK_EQ_INT(p2p_frame_decode_with_limit(frame, len, 100, &header, &body), DNA_OK);
    CHECK_EQ_INT(p2p_frame_decode_with_limit(frame, len, (size_t)-1, &header, &body), DNA_OK);
    CHECK_EQ_INT(p2p_frame_decode_with_limit(frame, len, 0, &header, &body), DNA_ERR_TOO_LARGE);
    CHECK_EQ_INT(p2p_frame_header_size(), DNA_FRAME_HEADER_SIZE);
    CHECK_EQ_INT(p2p_frame_max_payload(), DNA_FRAME_MAX_PAYLOAD);
}

int main(void) {
    test_valid_vectors();
    test_invalid_vectors();
    test_encode_arguments();
    test_decode_arguments_and_limit();
    return check_report("test_frame");
}
