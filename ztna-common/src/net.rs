//! Protected destinations: LPM trie values.
//!
//! Keys are the kernel's LPM key layout, a `u32` prefix length followed by the address bytes in network
//! byte order (`[u8; 4]` for IPv4, `[u8; 16]` for IPv6).

/// Value of `PROTECTED_V4` / `PROTECTED_V6`: the id of the protected network the prefix belongs to.
///
/// Services are looked up by this id, so every distinct prefix the policy names gets its own id and the
/// agent installs, for each prefix, the services of every app whose prefixes cover it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProtectedNet {
    pub net_id: u32,
}

const _: () = assert!(size_of::<ProtectedNet>() == 4);

/// An IPv4 address in the 16-byte form used by grant keys and events (`::ffff:a.b.c.d`).
#[inline(always)]
pub const fn v4_mapped(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_layout() {
        assert_eq!(
            v4_mapped([192, 0, 2, 7]),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7]
        );
    }
}
