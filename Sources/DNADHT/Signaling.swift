/// A signal for a key this node owns, forwarded by one of the key's holders (§5.6).
public struct SignalRequest: Sendable, Equatable {
    /// The holder that forwarded it; answers go back through it (`DHTNode.reply`).
    public var holder: Endpoint
    public var relay: UInt64
    /// The signaller's address as the holder saw it.
    public var origin: Endpoint
    public var key: NodeID
    /// The signaller's id for the conversation (the same through every holder: deduplicate by it).
    public var id: UInt64
    public var payload: [UInt8]
}

/// An answer from the owner of a key to a signal this node sent.
public struct SignalDelivery: Sendable, Equatable {
    public var id: UInt64
    /// The holder that relayed it.
    public var holder: Endpoint
    /// The owner's address as the holder saw it.
    public var from: Endpoint
    public var payload: [UInt8]
}
