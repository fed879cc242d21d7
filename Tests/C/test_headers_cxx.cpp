// The public headers compile as C++ (-std=c++11 -Wall -Wextra -Werror -pedantic) and link.
#include <dnatransport.h>
#include <cstdio>
#include <cstring>

int main() {
    unsigned char frame[DNA_FRAME_HEADER_SIZE + 3];
    const unsigned char payload[3] = {'a', 'b', 'c'};
    std::size_t len = 0;
    dna_frame_header_t header;
    const uint8_t *body = nullptr;
    int failures = 0;
    if (p2p_frame_encode(DNA_MSG_DATA, 1, payload, 3, frame, sizeof frame, &len) != DNA_OK) failures++;
    if (p2p_frame_decode(frame, len, &header, &body) != DNA_OK) failures++;
    if (body == nullptr || std::memcmp(body, payload, 3) != 0) failures++;
    if (dna_version_number() != DNA_VERSION_NUMBER) failures++;
    std::printf("test_headers_cxx: %d failed\n", failures);
    return failures;
}
