/* dna_common.h through the C ABI: versions, error strings, last error, buffers, the log handler. */
#include <dnatransport.h>
#include "check.h"

struct log_capture { int calls; int last_level; char last[512]; };

static void capture(int level, const char *message, void *user_data) {
    struct log_capture *c = (struct log_capture *)user_data;
    c->calls++;
    c->last_level = level;
    strncpy(c->last, message, sizeof c->last - 1);
    c->last[sizeof c->last - 1] = '\0';
}

int main(void) {
    int code, other;
    struct log_capture log;
    dna_frame_header_t header;
    const uint8_t garbage[40] = {'X', 'N', 'A', ' '};

    /* The header and the library agree on the version. */
    CHECK_EQ_INT(dna_version_number(), DNA_VERSION_NUMBER);
    CHECK(strcmp(dna_version_string(), DNA_VERSION_STRING) == 0);
    CHECK_EQ_INT(DNA_VERSION_NUMBER, DNA_VERSION_MAJOR * 10000 + DNA_VERSION_MINOR * 100 + DNA_VERSION_PATCH);

    /* Every code has its own static message; others are "unknown error". */
    CHECK(strcmp(dna_strerror(DNA_OK), "success") == 0);
    for (code = DNA_ERR_REFUSED; code <= DNA_ERR_INVALID_ARGUMENT; code++) {
        CHECK(dna_strerror(code) != NULL && strlen(dna_strerror(code)) > 0);
        CHECK(strcmp(dna_strerror(code), "unknown error") != 0);
        for (other = code + 1; other <= DNA_ERR_INVALID_ARGUMENT; other++)
            CHECK(strcmp(dna_strerror(code), dna_strerror(other)) != 0);
    }
    CHECK(strcmp(dna_strerror(-1000), "unknown error") == 0);
    CHECK(strcmp(dna_strerror(5), "unknown error") == 0);

    /* Buffers: freeing NULL does nothing; a malloc'd buffer is the library's kind. */
    dna_buffer_free(NULL);
    dna_buffer_free(malloc(16));

    /* dna_last_error keeps the last failure; success does not reset it. */
    CHECK_EQ_INT(p2p_frame_decode(garbage, sizeof garbage, &header, NULL), DNA_ERR_BAD_MAGIC);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_BAD_MAGIC);
    CHECK_EQ_INT(p2p_frame_decode(NULL, 0, &header, NULL), DNA_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(dna_last_error(), DNA_ERR_INVALID_ARGUMENT);

    /* The log handler sees a failed decode at debug level, not below its min_level, and not after removal. */
    memset(&log, 0, sizeof log);
    dna_set_log_handler(capture, DNA_LOG_DEBUG, &log);
    CHECK_EQ_INT(p2p_frame_decode(garbage, sizeof garbage, &header, NULL), DNA_ERR_BAD_MAGIC);
    CHECK_EQ_INT(log.calls, 1);
    CHECK_EQ_INT(log.last_level, DNA_LOG_DEBUG);
    CHECK(strstr(log.last, "p2p_frame_decode") != NULL);
    CHECK(strstr(log.last, "bad frame magic") != NULL);
    dna_set_log_handler(capture, DNA_LOG_INFO, &log);
    CHECK_EQ_INT(p2p_frame_decode(garbage, sizeof garbage, &header, NULL), DNA_ERR_BAD_MAGIC);
    CHECK_EQ_INT(log.calls, 1);
    dna_set_log_handler(capture, -7, &log);  /* clamped to TRACE */
    CHECK_EQ_INT(p2p_frame_decode(garbage, sizeof garbage, &header, NULL), DNA_ERR_BAD_MAGIC);
    CHECK_EQ_INT(log.calls, 2);
    dna_set_log_handler(NULL, DNA_LOG_TRACE, NULL);
    CHECK_EQ_INT(p2p_frame_decode(garbage, sizeof garbage, &header, NULL), DNA_ERR_BAD_MAGIC);
    CHECK_EQ_INT(log.calls, 2);

    return check_report("test_common");
}
