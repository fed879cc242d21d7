import ArgumentParser
import DNAWire

@main
struct Dnat: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dnat",
        abstract: "dnatransport: peer-to-peer transport with DHT discovery, NAT traversal and encrypted messages.",
        subcommands: [Node.self, Demo.self, Chat.self, Send.self, Listen.self, Put.self, Get.self, Watch.self, PublishKeys.self, Version.self]
    )
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the library version.")

    func run() throws {
        print("dnat \(DNAVersion.string)")
    }
}
