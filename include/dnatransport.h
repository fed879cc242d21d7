/*
 * dnatransport.h: the umbrella header of libdnatransport, a peer-to-peer transport with peer
 * discovery, NAT traversal and encrypted message transport.
 *
 * Threads: every function may be called from any thread; see each header for details.
 *
 * Build:  cc app.c $(pkg-config --cflags --libs dnatransport)
 */
#ifndef DNATRANSPORT_H
#define DNATRANSPORT_H

#include "dnatransport/dna_common.h"
#include "dnatransport/p2p_protocol.h"
#include "dnatransport/dna_identity.h"
#include "dnatransport/dna_session.h"
#include "dnatransport/dht_discovery.h"
#include "dnatransport/dht_values.h"
#include "dnatransport/nat_traversal.h"
#include "dnatransport/network_transport.h"

#endif /* DNATRANSPORT_H */
