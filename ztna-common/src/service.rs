//! Services on protected networks: (net, protocol, destination port) -> app.

/// The app follows the global mode.
pub const APP_MODE_INHERIT: u32 = 0;
/// The app is enforced even when the gateway is globally in monitor mode.
pub const APP_MODE_ENFORCE: u32 = 1;
/// The app is in monitor mode: would-drop packets pass and are reported.
pub const APP_MODE_MONITOR: u32 = 2;

/// Key of `SERVICES`.
///
/// The XDP program looks up the exact key first, then `(net, proto, port 0)`, then `(net, proto 0,
/// port 0)`: port 0 and protocol 0 are wildcards. Port ranges are expanded by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// [`crate::net::ProtectedNet::net_id`] of the longest matching protected prefix.
    pub net_id: u32,
    /// Destination port, network byte order; 0 for protocols without ports and for the wildcard.
    pub dport_be: u16,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6); 0 is the wildcard.
    pub proto: u8,
    pub _pad0: u8,
}

const _: () = assert!(size_of::<ServiceKey>() == 8);

impl ServiceKey {
    /// A key for `port` given in host byte order.
    pub const fn new(net_id: u32, proto: u8, port: u16) -> Self {
        Self {
            net_id,
            dport_be: port.to_be(),
            proto,
            _pad0: 0,
        }
    }

    /// The destination port in host byte order.
    pub const fn port(&self) -> u16 {
        u16::from_be(self.dport_be)
    }
}

/// Value of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// The app this service belongs to; grants are keyed by it. App ids start at 1.
    pub app_id: u32,
    /// [`APP_MODE_INHERIT`], [`APP_MODE_ENFORCE`] or [`APP_MODE_MONITOR`].
    pub mode: u32,
}

const _: () = assert!(size_of::<ServiceValue>() == 8);
