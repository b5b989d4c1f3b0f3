//! Which addresses a probe may connect to when `deny_private_addresses` is on.
//!
//! A monitor whose targets come from its users is a way into the network it runs in: a target
//! `http://10.0.0.5/admin`, or a public name that resolves to 127.0.0.1, makes the checker reach
//! what only it can reach (server-side request forgery). The guard is applied where the
//! connection is made, to the address libcurl is about to connect to, so it holds after DNS
//! resolution, for every address a name resolves to, and on every redirect.
//!
//! The ranges are IANA's special-purpose address registries (RFC 6890 and its updates, for
//! IPv4 and IPv6) plus multicast and the reserved 240/4, with IPv6 forms that embed an IPv4
//! address (mapped, NAT64, 6to4) judged by that address. The idea of filtering resolved
//! addresses in the checker itself is getsentry/uptime-checker's (`ip_filter.rs`); the list and
//! the code are ours.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why `address` may not be connected to, or `None` if it is a public unicast address.
pub fn reserved_range(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => reserved_v4(v4),
        IpAddr::V6(v6) => reserved_v6(v6),
    }
}

const V4_RANGES: &[([u8; 4], u8, &str)] = &[
    ([0, 0, 0, 0], 8, "a \"this network\" address (0.0.0.0/8)"),
    ([10, 0, 0, 0], 8, "a private address (10.0.0.0/8)"),
    (
        [100, 64, 0, 0],
        10,
        "a shared carrier-grade NAT address (100.64.0.0/10)",
    ),
    ([127, 0, 0, 0], 8, "a loopback address (127.0.0.0/8)"),
    (
        [169, 254, 0, 0],
        16,
        "a link-local address (169.254.0.0/16)",
    ),
    ([172, 16, 0, 0], 12, "a private address (172.16.0.0/12)"),
    (
        [192, 0, 0, 0],
        24,
        "an IETF protocol assignment (192.0.0.0/24)",
    ),
    ([192, 0, 2, 0], 24, "a documentation address (192.0.2.0/24)"),
    (
        [192, 88, 99, 0],
        24,
        "a 6to4 relay anycast address (192.88.99.0/24)",
    ),
    ([192, 168, 0, 0], 16, "a private address (192.168.0.0/16)"),
    (
        [198, 18, 0, 0],
        15,
        "a benchmarking address (198.18.0.0/15)",
    ),
    (
        [198, 51, 100, 0],
        24,
        "a documentation address (198.51.100.0/24)",
    ),
    (
        [203, 0, 113, 0],
        24,
        "a documentation address (203.0.113.0/24)",
    ),
    ([224, 0, 0, 0], 4, "a multicast address (224.0.0.0/4)"),
    ([240, 0, 0, 0], 4, "a reserved address (240.0.0.0/4)"),
];

fn reserved_v4(address: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(address);
    V4_RANGES.iter().find_map(|(network, prefix, why)| {
        let mask = u32::MAX << (32 - u32::from(*prefix));
        (bits & mask == u32::from(Ipv4Addr::from(*network))).then_some(*why)
    })
}

fn reserved_v6(address: Ipv6Addr) -> Option<&'static str> {
    let segments = address.segments();
    let bits = u128::from(address);
    let within = |network: u128, prefix: u32| bits & (u128::MAX << (128 - prefix)) == network;
    // Forms that carry an IPv4 address are as reachable as that address.
    if let Some(v4) = address.to_ipv4_mapped() {
        return reserved_v4(v4);
    }
    if within(0x0064_ff9b << 96, 96) {
        // NAT64 (RFC 6052): the last 32 bits are the IPv4 address reached.
        return reserved_v4(Ipv4Addr::from(bits as u32));
    }
    if segments[0] == 0x2002 {
        // 6to4 (RFC 3056): the IPv4 address is in bits 16-47.
        return reserved_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    if address.is_unspecified() {
        return Some("the unspecified address (::)");
    }
    if address.is_loopback() {
        return Some("a loopback address (::1)");
    }
    // ::/96, IPv4-compatible addresses, deprecated (RFC 4291).
    if within(0, 96) {
        return Some("an IPv4-compatible address (::/96)");
    }
    const RANGES: &[(u128, u32, &str)] = &[
        (
            0x0064_ff9b_0001 << 80,
            48,
            "a local-use NAT64 address (64:ff9b:1::/48)",
        ),
        (0x0100 << 112, 64, "a discard-only address (100::/64)"),
        (
            0x2001_0db8 << 96,
            32,
            "a documentation address (2001:db8::/32)",
        ),
        (0x2001 << 112, 23, "an IETF protocol assignment (2001::/23)"),
        (0x3fff << 112, 20, "a documentation address (3fff::/20)"),
        (0xfc00 << 112, 7, "a unique local address (fc00::/7)"),
        (0xfe80 << 112, 10, "a link-local address (fe80::/10)"),
        (0xfec0 << 112, 10, "a site-local address (fec0::/10)"),
        (0xff00 << 112, 8, "a multicast address (ff00::/8)"),
    ];
    RANGES
        .iter()
        .find_map(|(network, prefix, why)| within(*network, *prefix).then_some(*why))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(text: &str) -> Option<&'static str> {
        reserved_range(text.parse().unwrap())
    }

    #[test]
    fn reserved_ipv4_ranges_are_refused_at_their_edges() {
        for (address, expected) in [
            ("127.0.0.1", "loopback"),
            ("127.255.255.255", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "carrier-grade"),
            ("0.0.0.0", "this network"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("198.19.255.255", "benchmarking"),
        ] {
            let why = why(address).unwrap_or_else(|| panic!("{address} is let through"));
            assert!(why.contains(expected), "{address}: {why}");
        }
        for public in [
            "172.15.255.255",
            "172.32.0.0",
            "100.128.0.0",
            "8.8.8.8",
            "93.184.215.14",
            "192.0.3.1",
            "198.20.0.0",
        ] {
            assert_eq!(why(public), None, "{public} is public");
        }
    }

    #[test]
    fn reserved_ipv6_ranges_and_embedded_ipv4_are_refused() {
        for (address, expected) in [
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:c0a8:0101::1", "private"),
            ("::7f00:1", "IPv4-compatible"),
        ] {
            let why = why(address).unwrap_or_else(|| panic!("{address} is let through"));
            assert!(why.contains(expected), "{address}: {why}");
        }
        for public in [
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert_eq!(why(public), None, "{public} is public");
        }
    }
}
