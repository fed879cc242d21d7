/* The seed's own include style works with pkg-config's Cflags: #include "p2p_protocol.h". */
#include "p2p_protocol.h"
#include "check.h"

int main(void) {
    uint8_t frame[DNA_FRAME_HEADER_SIZE];
    size_t len = 0;
    dna_frame_header_t header;
    CHECK_EQ_INT(p2p_frame_encode(DNA_MSG_PRESENCE, 3, NULL, 0, frame, sizeof frame, &len), DNA_OK);
    CHECK_EQ_INT(p2p_frame_decode(frame, len, &header, NULL), DNA_OK);
    CHECK_EQ_INT(header.type, DNA_MSG_PRESENCE);
    return check_report("test_seed_include");
}
