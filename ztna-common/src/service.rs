//! Services on protected networks: (net, protocol, destination port) -> app.

/// The app follows the global mode.
pub const APP_MODE_INHERIT: u32 = 0;
/// The app is enforced even when the gateway is globally in monitor mode.
pub const APP_MODE_ENFORCE: u32 = 1;
/// The app is in monitor mode: would-drop packets pass and are reported.
pub const APP_MODE_MONITOR: u32 = 2;

/// A service of a protected network: what the agent installs in `SERVICES`.
///
/// `SERVICES` is an LPM trie over [`ServiceKey::lpm_data`] (net id, protocol, port), so that one lookup
/// finds the most specific entry: the exact (net, proto, port), else (net, proto, any port) — port 0 —
/// else (net, any protocol) — protocol 0, whose port is ignored. A trie lookup costs less than hashing
/// the key, and it replaces the chain of exact-then-wildcard lookups a hash map would need.
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

    /// The key data in `SERVICES`: net id (big endian), protocol, port (network order), a zero byte.
    #[inline(always)]
    pub const fn lpm_data(&self) -> ServiceLpmData {
        let net = self.net_id.to_be_bytes();
        let port = self.dport_be.to_ne_bytes();
        [
            net[0], net[1], net[2], net[3], self.proto, port[0], port[1], 0,
        ]
    }

    /// The prefix length in `SERVICES`: [`SERVICE_PREFIX_EXACT`], [`SERVICE_PREFIX_ANY_PORT`] for port
    /// 0, [`SERVICE_PREFIX_ANY_PROTO`] for protocol 0.
    pub const fn prefix_len(&self) -> u32 {
        if self.proto == 0 {
            SERVICE_PREFIX_ANY_PROTO
        } else if self.dport_be == 0 {
            SERVICE_PREFIX_ANY_PORT
        } else {
            SERVICE_PREFIX_EXACT
        }
    }

    /// The key an LPM entry stands for (the inverse of [`Self::lpm_data`] and [`Self::prefix_len`]).
    pub const fn from_lpm(prefix_len: u32, data: ServiceLpmData) -> Self {
        let net_id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let proto = if prefix_len >= SERVICE_PREFIX_ANY_PORT {
            data[4]
        } else {
            0
        };
        let dport_be = if prefix_len >= SERVICE_PREFIX_EXACT {
            u16::from_ne_bytes([data[5], data[6]])
        } else {
            0
        };
        Self {
            net_id,
            dport_be,
            proto,
            _pad0: 0,
        }
    }
}

/// LPM key data of `SERVICES`, see [`ServiceKey::lpm_data`].
pub type ServiceLpmData = [u8; 8];
/// Prefix length of an exact (net, proto, port) service.
pub const SERVICE_PREFIX_EXACT: u32 = 56;
/// Prefix length of a (net, proto, any port) service.
pub const SERVICE_PREFIX_ANY_PORT: u32 = 40;
/// Prefix length of a (net, any protocol) service.
pub const SERVICE_PREFIX_ANY_PROTO: u32 = 32;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpm_round_trip() {
        for key in [
            ServiceKey::new(7, 6, 443),
            ServiceKey::new(7, 17, 0),
            ServiceKey::new(0x0102_0304, 0, 0),
        ] {
            assert_eq!(ServiceKey::from_lpm(key.prefix_len(), key.lpm_data()), key);
        }
        assert_eq!(
            ServiceKey::new(0x0102_0304, 6, 0x1f90).lpm_data(),
            [1, 2, 3, 4, 6, 0x1f, 0x90, 0]
        );
    }
}
