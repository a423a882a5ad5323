//! IP networks for the `ClientIP` matcher.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP address or CIDR block, v4 or v6. A bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in this network. IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`,
    /// what a dual-stack socket reports for an IPv4 peer) match as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Maps an IPv4-mapped IPv6 address to IPv4; leaves everything else alone.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("`{s}`: prefix length must be 0..={max}")),
            },
        };
        Ok(IpNet {
            addr: canonical(addr),
            prefix: if addr.is_ipv6() && canonical(addr).is_ipv4() {
                prefix.saturating_sub(96)
            } else {
                prefix
            },
        })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The client address an `ipStrategy` reads from `X-Forwarded-For` (Traefik's
/// `ip.DepthStrategy` and `ip.PoolStrategy`): with `depth > 0`, the entry `depth` places
/// from the right; else the rightmost entry outside `excluded`. `values` are the header's
/// lines, read as one comma-separated list. `None` when there are too few entries, or
/// only excluded or unparsable ones.
pub fn forwarded_client<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    depth: u32,
    excluded: &[IpNet],
) -> Option<IpAddr> {
    let entries: Vec<&str> = values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if depth > 0 {
        let at = entries.len().checked_sub(depth as usize)?;
        return entries.get(at)?.parse().ok().map(canonical);
    }
    entries
        .iter()
        .rev()
        .filter_map(|e| e.parse::<IpAddr>().ok())
        .map(canonical)
        .find(|ip| !excluded.iter().any(|n| n.contains(*ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn v4_and_v6_cidrs() {
        assert!(net("10.0.0.0/8").contains("10.1.2.3".parse().unwrap()));
        assert!(!net("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("1.1.1.1".parse().unwrap()));
        assert!(net("192.168.1.7").contains("192.168.1.7".parse().unwrap()));
        assert!(!net("192.168.1.7").contains("192.168.1.8".parse().unwrap()));
        assert!(net("2001:db8::/32").contains("2001:db8:1::1".parse().unwrap()));
        assert!(!net("2001:db8::/32").contains("2001:db9::1".parse().unwrap()));
        assert!(!net("::/0").contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn mapped_v4_peers_match_v4_rules() {
        assert!(net("127.0.0.0/8").contains("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn rejects_nonsense() {
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("example.com".parse::<IpNet>().is_err());
        assert!("::/129".parse::<IpNet>().is_err());
    }
}
