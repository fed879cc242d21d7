/// The type field of a DNA frame (seed, §Message Types). Values are fixed on the wire.
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
}
