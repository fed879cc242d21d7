/// The type field of a DNA frame (seed, §Message Types). Values are fixed on the wire. The seed
/// defines 0x0001 to 0x0005; the others are this library's protocol extensions (docs/PROTOCOL.md).
public enum MessageType: UInt16, Sendable, CaseIterable {
    /// An encrypted application message.
    case data = 0x0001
    /// An acknowledgement.
    case ack = 0x0002
    /// A keepalive ping.
    case ping = 0x0003
    /// The answer to a ping.
    case pong = 0x0004
    /// An online-status update.
    case presence = 0x0005
    /// Extension (docs/PROTOCOL.md §4): one piece of a handshake message.
    case handshake = 0x0010
    /// Extension (docs/PROTOCOL.md §4): which pieces of a handshake message have arrived.
    case handshakeAck = 0x0011
    /// Extension (docs/PROTOCOL.md §5): a piece of a DHT message.
    case dht = 0x0020
    /// Extension (docs/PROTOCOL.md §7.6): the sender closed the connection.
    case close = 0x0030
}
