//! Host inventory: the `--hosts` syntax.
//!
//! A list separated by commas, spaces or new lines; each item is
//! - a host name (`gpu-1`, `gpu-1.lab.example`) or an IP address
//!   (`10.0.0.5`, `fd00::5`),
//! - an IPv4 range, either `10.0.0.5-9` (last octet) or
//!   `10.0.0.5-10.0.0.9`,
//! - an IPv4 CIDR block, `10.0.0.0/29` (network and broadcast addresses
//!   are left out for blocks larger than /31),
//! - `#` starts a comment to the end of the line (for host files).
//!
//! Duplicates are dropped (first occurrence kept); at most [`MAX_HOSTS`].

use std::net::{IpAddr, Ipv4Addr};

/// Upper bound on the hosts one deploy handles (a typo such as `/8` must
/// not start 16 million SSH connections).
pub const MAX_HOSTS: usize = 256;

/// Why a host list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostsError {
    #[error("no hosts given")]
    Empty,
    #[error("`{item}`: {reason}")]
    Invalid { item: String, reason: String },
    #[error("more than {MAX_HOSTS} hosts")]
    TooMany,
}

/// Parses a host list (see the module docs).
pub fn parse_hosts(spec: &str) -> Result<Vec<String>, HostsError> {
    let mut out: Vec<String> = Vec::new();
    let push = |h: String, out: &mut Vec<String>| -> Result<(), HostsError> {
        if !out.contains(&h) {
            if out.len() >= MAX_HOSTS {
                return Err(HostsError::TooMany);
            }
            out.push(h);
        }
        Ok(())
    };
    for line in spec.lines() {
        let line = line.split('#').next().unwrap_or("");
        for item in line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
        {
            let bad = |reason: &str| HostsError::Invalid {
                item: item.chars().take(80).collect(),
                reason: reason.to_owned(),
            };
            if let Some((net, bits)) = item.split_once('/') {
                let net: Ipv4Addr = net.parse().map_err(|_| bad("not an IPv4 block"))?;
                let bits: u32 = bits.parse().map_err(|_| bad("bad prefix length"))?;
                if !(16..=32).contains(&bits) {
                    return Err(bad("prefix length must be between /16 and /32"));
                }
                let size = 1u64 << (32 - bits);
                if size > MAX_HOSTS as u64 + 2 {
                    return Err(HostsError::TooMany);
                }
                let base = u32::from(net) & (u32::MAX.checked_shl(32 - bits).unwrap_or(0));
                let (first, last) = if size > 2 {
                    (base as u64 + 1, base as u64 + size - 2)
                } else {
                    (base as u64, base as u64 + size - 1)
                };
                for a in first..=last {
                    push(Ipv4Addr::from(a as u32).to_string(), &mut out)?;
                }
            } else if let Some((from, to)) = item
                .split_once('-')
                .filter(|(f, _)| f.parse::<Ipv4Addr>().is_ok())
            {
                let from: Ipv4Addr = from.parse().map_err(|_| bad("bad range start"))?;
                let to: Ipv4Addr = match to.parse::<u8>() {
                    Ok(last) => {
                        let o = from.octets();
                        Ipv4Addr::new(o[0], o[1], o[2], last)
                    }
                    Err(_) => to.parse().map_err(|_| bad("bad range end"))?,
                };
                let (a, b) = (u32::from(from), u32::from(to));
                if b < a {
                    return Err(bad("range end is before its start"));
                }
                if (b - a) as usize >= MAX_HOSTS {
                    return Err(HostsError::TooMany);
                }
                for x in a..=b {
                    push(Ipv4Addr::from(x).to_string(), &mut out)?;
                }
            } else if let Ok(ip) = item
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
            {
                push(ip.to_string(), &mut out)?;
            } else {
                check_hostname(item).map_err(bad)?;
                push(item.to_ascii_lowercase(), &mut out)?;
            }
        }
    }
    if out.is_empty() {
        return Err(HostsError::Empty);
    }
    Ok(out)
}

/// RFC 1123 host name: labels of letters, digits and inner hyphens.
fn check_hostname(h: &str) -> Result<(), &'static str> {
    if h.len() > 253 {
        return Err("host name too long");
    }
    for label in h.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("not a host name or address");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err("not a host name or address");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lists_ranges_blocks_and_files() {
        assert_eq!(
            parse_hosts("10.0.0.1, gpu-1\n10.0.0.3-5 # rack 2\n\n10.0.0.1").unwrap(),
            ["10.0.0.1", "gpu-1", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
        );
        assert_eq!(
            parse_hosts("10.0.0.254-10.0.1.1").unwrap(),
            ["10.0.0.254", "10.0.0.255", "10.0.1.0", "10.0.1.1"]
        );
        assert_eq!(
            parse_hosts("192.168.1.0/30").unwrap(),
            ["192.168.1.1", "192.168.1.2"]
        );
        assert_eq!(parse_hosts("10.1.1.1/32").unwrap(), ["10.1.1.1"]);
        assert_eq!(parse_hosts("[fd00::5]").unwrap(), ["fd00::5"]);
        assert_eq!(parse_hosts("GPU-1.Lab").unwrap(), ["gpu-1.lab"]);
    }

    #[test]
    fn bad_input_is_refused_with_the_item_named() {
        assert_eq!(parse_hosts(" , \n# only a comment"), Err(HostsError::Empty));
        assert_eq!(
            parse_hosts("10.0.0.0/8"),
            Err(HostsError::Invalid {
                item: "10.0.0.0/8".into(),
                reason: "prefix length must be between /16 and /32".into()
            })
        );
        assert_eq!(parse_hosts("10.0.0.0/16"), Err(HostsError::TooMany));
        assert!(matches!(
            parse_hosts("10.0.0.9-3"),
            Err(HostsError::Invalid { .. })
        ));
        assert!(matches!(
            parse_hosts("host;rm -rf /"),
            Err(HostsError::Invalid { .. })
        ));
        assert!(matches!(
            parse_hosts("-oProxyCommand=x"),
            Err(HostsError::Invalid { .. })
        ));
        assert!(matches!(
            parse_hosts("a..b"),
            Err(HostsError::Invalid { .. })
        ));
    }

    proptest! {
        #[test]
        fn never_panics_and_yields_only_safe_names(s in ".{0,200}") {
            if let Ok(hosts) = parse_hosts(&s) {
                prop_assert!(!hosts.is_empty() && hosts.len() <= MAX_HOSTS);
                for h in hosts {
                    prop_assert!(h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b)), "{h}");
                    prop_assert!(!h.starts_with('-'));
                }
            }
        }
    }
}
