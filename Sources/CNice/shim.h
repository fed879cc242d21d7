#ifndef DNA_CNICE_SHIM_H
#define DNA_CNICE_SHIM_H
#include <stun/stunagent.h>
#include <stun/stunmessage.h>
#include <sys/socket.h>

/* Answers a STUN Binding request (RFC 8489) with XOR-MAPPED-ADDRESS = from, using libnice's STUN
   agent. Returns the response length in out, or 0 when the datagram is not a valid Binding request
   (it is then dropped). */
static inline size_t dna_stun_answer_binding(const uint8_t *request, size_t request_len,
                                             const struct sockaddr *from, socklen_t from_len,
                                             uint8_t *out, size_t out_capacity) {
    StunAgent agent;
    StunMessage message, response;
    stun_agent_init(&agent, STUN_ALL_KNOWN_ATTRIBUTES, STUN_COMPATIBILITY_RFC5389,
                    (StunAgentUsageFlags)(STUN_AGENT_USAGE_IGNORE_CREDENTIALS | STUN_AGENT_USAGE_ADD_SOFTWARE));
    if (stun_agent_validate(&agent, &message, request, request_len, NULL, NULL) != STUN_VALIDATION_SUCCESS)
        return 0;
    if (stun_message_get_class(&message) != STUN_REQUEST || stun_message_get_method(&message) != STUN_BINDING)
        return 0;
    if (!stun_agent_init_response(&agent, &response, out, out_capacity, &message))
        return 0;
    if (stun_message_append_xor_addr(&response, STUN_ATTRIBUTE_XOR_MAPPED_ADDRESS, from, from_len) != STUN_MESSAGE_RETURN_SUCCESS)
        return 0;
    return stun_agent_finish_message(&agent, &response, NULL, 0);
}
#endif
