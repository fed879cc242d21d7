import CDNATransport

// Compile-time proof that every export has exactly the type of its prototype in include/: a mismatch
// in any parameter or result fails the build. Each export must appear here.
private func sameType<T>(_ header: T, _ export: T) {}

func abiCheck() {
    // dna_common.h
    sameType(CDNATransport.dna_strerror, DNACABI.dna_strerror)
    sameType(CDNATransport.dna_last_error, DNACABI.dna_last_error)
    sameType(CDNATransport.dna_version_string, DNACABI.dna_version_string)
    sameType(CDNATransport.dna_version_number, DNACABI.dna_version_number)
    sameType(CDNATransport.dna_buffer_free, DNACABI.dna_buffer_free)
    sameType(CDNATransport.dna_set_log_handler, DNACABI.dna_set_log_handler)
    // p2p_protocol.h
    sameType(CDNATransport.p2p_frame_header_size, DNACABI.p2p_frame_header_size)
    sameType(CDNATransport.p2p_frame_max_payload, DNACABI.p2p_frame_max_payload)
    sameType(CDNATransport.p2p_frame_encode, DNACABI.p2p_frame_encode)
    sameType(CDNATransport.p2p_frame_decode, DNACABI.p2p_frame_decode)
    sameType(CDNATransport.p2p_frame_decode_with_limit, DNACABI.p2p_frame_decode_with_limit)
    // dna_identity.h
    sameType(CDNATransport.dna_identity_max, DNACABI.dna_identity_max)
    sameType(CDNATransport.dna_public_key_size, DNACABI.dna_public_key_size)
    sameType(CDNATransport.dna_signature_size, DNACABI.dna_signature_size)
    sameType(CDNATransport.dna_identity_load, DNACABI.dna_identity_load)
    sameType(CDNATransport.dna_identity_public_key, DNACABI.dna_identity_public_key)
    sameType(CDNATransport.dna_identity_fingerprint, DNACABI.dna_identity_fingerprint)
    sameType(CDNATransport.dna_fingerprint, DNACABI.dna_fingerprint)
    sameType(CDNATransport.dna_identity_free, DNACABI.dna_identity_free)
    // dna_session.h
    sameType(CDNATransport.dna_max_datagram, DNACABI.dna_max_datagram)
    sameType(CDNATransport.dna_session_overhead, DNACABI.dna_session_overhead)
    sameType(CDNATransport.dna_handshake_initiate, DNACABI.dna_handshake_initiate)
    sameType(CDNATransport.dna_handshake_respond, DNACABI.dna_handshake_respond)
    sameType(CDNATransport.dna_handshake_receive, DNACABI.dna_handshake_receive)
    sameType(CDNATransport.dna_handshake_next_datagram, DNACABI.dna_handshake_next_datagram)
    sameType(CDNATransport.dna_handshake_handle_timeout, DNACABI.dna_handshake_handle_timeout)
    sameType(CDNATransport.dna_handshake_next_deadline, DNACABI.dna_handshake_next_deadline)
    sameType(CDNATransport.dna_handshake_pending, DNACABI.dna_handshake_pending)
    sameType(CDNATransport.dna_handshake_take_session, DNACABI.dna_handshake_take_session)
    sameType(CDNATransport.dna_handshake_free, DNACABI.dna_handshake_free)
    sameType(CDNATransport.dna_session_peer, DNACABI.dna_session_peer)
    sameType(CDNATransport.dna_session_seal, DNACABI.dna_session_seal)
    sameType(CDNATransport.dna_session_open, DNACABI.dna_session_open)
    sameType(CDNATransport.dna_session_free, DNACABI.dna_session_free)
    // dht_discovery.h
    sameType(CDNATransport.dht_init, DNACABI.dht_init)
    sameType(CDNATransport.dht_bootstrap, DNACABI.dht_bootstrap)
    sameType(CDNATransport.dht_announce, DNACABI.dht_announce)
    sameType(CDNATransport.dht_find_peer, DNACABI.dht_find_peer)
    sameType(CDNATransport.dht_find_peer_entry, DNACABI.dht_find_peer_entry)
    sameType(CDNATransport.dht_refresh, DNACABI.dht_refresh)
    sameType(CDNATransport.dht_get_port, DNACABI.dht_get_port)
    sameType(CDNATransport.dht_get_stats, DNACABI.dht_get_stats)
    sameType(CDNATransport.dht_free, DNACABI.dht_free)
    sameType(CDNATransport.dht_peer_entry_signed_max, DNACABI.dht_peer_entry_signed_max)
    sameType(CDNATransport.dht_peer_entry_sign, DNACABI.dht_peer_entry_sign)
    sameType(CDNATransport.dht_peer_entry_verify, DNACABI.dht_peer_entry_verify)
    sameType(CDNATransport.dht_peer_entry_signed_bytes, DNACABI.dht_peer_entry_signed_bytes)
    // nat_traversal.h
    sameType(CDNATransport.nat_traversal_init, DNACABI.nat_traversal_init)
    sameType(CDNATransport.nat_set_turn_server, DNACABI.nat_set_turn_server)
    sameType(CDNATransport.nat_set_controlling, DNACABI.nat_set_controlling)
    sameType(CDNATransport.nat_set_timeout, DNACABI.nat_set_timeout)
    sameType(CDNATransport.nat_get_local_credentials, DNACABI.nat_get_local_credentials)
    sameType(CDNATransport.nat_set_remote_credentials, DNACABI.nat_set_remote_credentials)
    sameType(CDNATransport.nat_gather_candidates, DNACABI.nat_gather_candidates)
    sameType(CDNATransport.nat_add_remote_candidate, DNACABI.nat_add_remote_candidate)
    sameType(CDNATransport.nat_establish_connection, DNACABI.nat_establish_connection)
    sameType(CDNATransport.nat_get_selected_pair, DNACABI.nat_get_selected_pair)
    sameType(CDNATransport.nat_traversal_free, DNACABI.nat_traversal_free)
}
