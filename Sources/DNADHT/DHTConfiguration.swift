/// How a DHT node behaves. Times are milliseconds.
public struct DHTConfiguration: Sendable {
    public var k = 20
    public var alpha = 3
    /// Work bits a node id must carry (docs/PROTOCOL.md §5.3). All nodes of a network use the same.
    public var difficulty = 16
    /// At most this many contacts per /24 (/64) in a bucket; 0 turns the limit off. Loopback is exempt.
    public var networkCap = 2
    /// Idle buckets are refreshed, and dormant contacts pinged, this often (seed: 5 minutes).
    public var refreshInterval: UInt64 = 300_000
    /// Entries expire this long after their last_seen (owners re-announce every 5 minutes).
    public var entryLifetime: UInt64 = 1_800_000
    /// Requests per second one source address may make (bursts of twice as many); more are dropped.
    public var requestsPerSecond = 100.0
    /// Entries one source address may have stored here.
    public var entriesPerSource = 32
    public var maximumEntries = 100_000
    /// Tokens rotate this often; the previous token stays valid for one more period.
    public var tokenRotation: UInt64 = 300_000
    /// Owners ping the nodes that hold their entries this often, so that their NAT keeps the
    /// mapping the holders forward signals to (mappings last about 30 s before a reply, 120 s after).
    public var keepaliveInterval: UInt64 = 25_000
    /// A holder relays answers to a signal this long after forwarding it.
    public var relayLifetime: UInt64 = 30_000
    /// Signals in flight a holder keeps relays for; more are refused (busy).
    public var maximumRelays = 10_000
    /// A signal goes to at most this many holders of the key (redundancy against loss and Sybils).
    public var signalFanout = 3
    /// Whether this node keeps inboxes for offline delivery (§8). Bootstrap nodes do not (seed).
    public var storesMail = true
    /// Messages one sender may leave in one inbox here, messages per inbox, bytes of all inboxes.
    public var mailPerSender = 32
    public var mailPerInbox = 1000
    public var mailBytes = 64 << 20
    /// A holder stores the inbox items no MAIL_PUT brought for this long again on the nodes then
    /// closest to the inbox key (checked at each refresh), so that they reach nodes that joined
    /// since and outlive the holders that leave (Kademlia republishes hourly). At most
    /// `mailRepublishLimit` items per inbox per refresh.
    public var mailRepublishInterval: UInt64 = 3_600_000
    public var mailRepublishLimit = 64
    /// Signed values (§10.4): values one signer may have stored here and their wire bytes; values
    /// at one key (every signer's slots); values whose last put came from one source address; wire
    /// bytes of all values held.
    public var valuesPerSigner = 256
    public var valueBytesPerSigner = 4 << 20
    public var valuesPerKey = 512
    public var valuesPerSource = 4096
    public var valueBytes = 256 << 20
    /// Values arriving in parts that a holder puts together at once: per source address, in all.
    /// Each lives `valueUploadLifetime` ms after its last part.
    public var valueUploadsPerSource = 4
    public var valueUploads = 64
    public var valueUploadLifetime: UInt64 = 10_000
    /// A holder stores the values no put refreshed for this long again on the nodes then closest to
    /// their key (checked at each refresh; at most `valueRepublishLimit` values per refresh).
    public var valueRepublishInterval: UInt64 = 3_600_000
    public var valueRepublishLimit = 256
    /// Subscriptions to a key's values (§10.5): a holder keeps at most `listenersPerSource` per source
    /// address and `maximumListeners` in all, each `listenLifetime` ms; a listener renews its own
    /// every `listenRenewal` ms (a lookup of the key, a subscription to the holders then closest,
    /// and a get), which also finds holders that joined and survives its own change of address.
    public var listenersPerSource = 64
    public var maximumListeners = 10_000
    public var listenLifetime: UInt64 = 600_000
    public var listenRenewal: UInt64 = 300_000

    public init() {}
}

/// Counters for logs, statistics and tests.
public struct DHTStatistics: Equatable, Sendable {
    public var received = 0
    public var sent = 0
    public var requestsAnswered = 0
    public var dropped = 0          // garbage, truncated, oversized datagrams and bad credentials
    public var rateLimited = 0
    public var unexpectedResponses = 0  // unknown transaction or from another address
    public var refusedEntries = 0
    public var storedEntries = 0
    public var timeouts = 0
    /// Inbox items this holder's republishing stored on a node that did not have them (§8.3).
    public var mailRepublished = 0
    /// Contacts refused because no node could be reached at their address (§5.1, "Contacts"):
    /// in answers, bootstrap lists and saved state.
    public var refusedContacts = 0
    /// Pieces of multi-datagram messages dropped: over a source's or a network's share of the
    /// reassembly state, or over the source's rate (§5.1, §5.5).
    public var refusedPieces = 0
    /// Lookups of a key's value started by this node (FIND_VALUE, and signals, which look the holders up).
    public var valueLookups = 0
    /// Endpoints whose path was found to lose datagrams above a smaller size (§9).
    public var pathSizeReductions = 0
    /// Answers sent again to a retried multi-datagram request whose pieces had all come (§5.1).
    public var answersRepeated = 0
    /// Signed values (§10): stored here (new or replacing), refused (invalid, out of time, over a
    /// quota, busy, or superseded by one held), and values a get fetched that did not verify.
    public var storedValues = 0
    public var refusedValues = 0
    public var refusedFetchedValues = 0
    /// Values this holder started to store again on the k nodes closest to their key (§10.4).
    public var valuesRepublished = 0
}
