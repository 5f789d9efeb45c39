//! Address helpers: CIDR sets and listen-address parsing.

use std::net::{IpAddr, SocketAddr};

/// One address range, such as `10.0.0.0/8` or `::1/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDRESS/PREFIX` or a bare address (a range of one).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| {
            format!(
                "invalid address range `{text}`: expected an IP address or CIDR such as 10.0.0.0/8"
            )
        })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid prefix length in `{text}`: expected 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match (self.network, address) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => address,
        };
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// A list of ranges; an address is in the set when any range contains it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrSet {
    ranges: Vec<Cidr>,
}

impl CidrSet {
    pub fn parse<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<CidrSet, String> {
        let ranges = texts
            .into_iter()
            .map(Cidr::parse)
            .collect::<Result<_, _>>()?;
        Ok(CidrSet { ranges })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        self.ranges.iter().any(|range| range.contains(address))
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// Parses a listen address such as `0.0.0.0:8080` or `[::1]:8080`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "invalid listen address `{text}`: expected IP:PORT such as 0.0.0.0:8080 or [::1]:8080"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let range = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(range.contains("10.200.1.1".parse().unwrap()));
        assert!(!range.contains("11.0.0.1".parse().unwrap()));
        assert!(range.contains("::ffff:10.0.0.1".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let one = Cidr::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
    }

    #[test]
    fn cidr_errors_name_value() {
        let error = Cidr::parse("10.0.0.0/33").unwrap_err();
        assert!(error.contains("10.0.0.0/33"));
        assert!(Cidr::parse("example.com").is_err());
    }
}
