//! Finding the underlay: the host interfaces that hold a default route.
//!
//! Read from /proc/net/{route,ipv6_route} of the host netns (the plugin runs there), which
//! needs no netlink and is the same table `ip route show default` prints.

/// RTF_UP: the route is usable.
const RTF_UP: u32 = 0x0001;
/// RTF_REJECT: an unreachable/prohibit route, not a way out.
const RTF_REJECT: u32 = 0x0200;

/// Interface names holding an IPv4 or IPv6 default route, deduplicated, in table order.
pub fn default_route_interfaces() -> std::io::Result<Vec<String>> {
    let v4 = std::fs::read_to_string("/proc/net/route")?;
    // A kernel without IPv6 has no ipv6_route file; that is not an error here.
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    let mut names = parse_ipv4(&v4);
    for name in parse_ipv6(&v6) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Default routes in /proc/net/route: destination and mask both 0.
fn parse_ipv4(table: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(iface), Some(dst), Some(flags), Some(mask)) =
            (f.first(), f.get(1), f.get(3), f.get(7))
        else {
            continue;
        };
        let flags = u32::from_str_radix(flags, 16).unwrap_or(0);
        if *dst == "00000000" && *mask == "00000000" && usable(iface, flags) {
            push_unique(&mut names, iface);
        }
    }
    names
}

/// Default routes in /proc/net/ipv6_route: destination ::/0 (field 1 = prefix length 00).
fn parse_ipv6(table: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dst), Some(plen), Some(flags), Some(iface)) =
            (f.first(), f.get(1), f.get(8), f.get(9))
        else {
            continue;
        };
        let flags = u32::from_str_radix(flags, 16).unwrap_or(0);
        if dst.bytes().all(|b| b == b'0') && *plen == "00" && usable(iface, flags) {
            push_unique(&mut names, iface);
        }
    }
    names
}

fn usable(iface: &str, flags: u32) -> bool {
    // "*": no device, as an IPv4 blackhole default (listed without RTF_REJECT) has none
    iface != "lo" && iface != "*" && flags & RTF_UP != 0 && flags & RTF_REJECT == 0
}

fn push_unique(names: &mut Vec<String>, iface: &str) {
    if !names.iter().any(|n| n == iface) {
        names.push(iface.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        bond1\t00000000\t010A0A0A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
        *\t00000000\t00000000\t0001\t0\t0\t9999\t00000000\t0\t0\t0\n";

    const V6: &str = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     ens5
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    #[test]
    fn ipv4_default_routes_are_found_and_a_blackhole_default_is_not_one() {
        assert_eq!(parse_ipv4(V4), vec!["eth0", "bond1"]);
    }

    #[test]
    fn ipv6_default_routes_skip_lo_and_reject_routes() {
        assert_eq!(parse_ipv6(V6), vec!["ens5"]);
    }

    #[test]
    fn garbage_tables_yield_nothing() {
        assert!(parse_ipv4("Iface\nonly-one-field\n\u{0}\u{1}").is_empty());
        assert!(parse_ipv6("0 0 0\n").is_empty());
    }

    #[test]
    fn this_host_is_readable() {
        assert!(default_route_interfaces().is_ok());
    }
}
