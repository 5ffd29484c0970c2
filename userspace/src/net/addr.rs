//! Address types used across config, API and datapath: IPv4 subnets and MAC addresses.
use std::{fmt, net::Ipv4Addr, str::FromStr};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// An IPv4 subnet whose host bits are zero ("10.244.1.0/24").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net(ipnet::Ipv4Net);

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self> {
        let net = ipnet::Ipv4Net::new(addr, prefix_len)
            .with_context(|| format!("prefix length /{prefix_len} is over 32"))?;
        if net.trunc() != net {
            bail!("{net} has host bits set: did you mean {}?", net.trunc());
        }
        Ok(Self(net))
    }
    pub fn addr(&self) -> Ipv4Addr {
        self.0.network()
    }
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.0.contains(&addr)
    }
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.0.contains(&other.0.network()) || other.0.contains(&self.0.network())
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        self.0.broadcast()
    }
    /// Whether `addr` can be given to a container: inside, and neither the network
    /// nor the broadcast address.
    pub fn is_usable_host(&self, addr: Ipv4Addr) -> bool {
        self.contains(addr) && addr != self.addr() && addr != self.broadcast()
    }
}

impl FromStr for Ipv4Net {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let Some((addr, len)) = s.split_once('/') else {
            bail!("{s:?} is not a CIDR subnet: write it as ADDRESS/PREFIX, e.g. 10.244.1.0/24");
        };
        let addr: Ipv4Addr = addr.parse().with_context(|| {
            format!("{s:?} is not a CIDR subnet: {addr:?} is not an IPv4 address")
        })?;
        let len: u8 = len
            .parse()
            .with_context(|| format!("{s:?} is not a CIDR subnet: bad prefix length {len:?}"))?;
        if len > 32 {
            bail!("{s:?}: prefix length /{len} is over 32");
        }
        Self::new(addr, len)
    }
}

impl TryFrom<String> for Ipv4Net {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Ipv4Net> for String {
    fn from(n: Ipv4Net) -> String {
        n.to_string()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An Ethernet MAC address ("02:00:00:00:00:0b").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered unicast MAC derived from `seed` with FNV-1a, so it is the
    /// same on every start and on every build.
    pub fn derived(seed: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let b = h.to_be_bytes();
        Self([0x02, b[3], b[4], b[5], b[6], b[7]])
    }
}

impl FromStr for MacAddr {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let mut mac = [0u8; 6];
        if parts.len() != 6 {
            bail!("{s:?} is not a MAC address: write six hex bytes, e.g. 02:00:00:00:00:01");
        }
        for (slot, part) in mac.iter_mut().zip(parts) {
            *slot = u8::from_str_radix(part, 16)
                .ok()
                .filter(|_| part.len() == 2)
                .with_context(|| {
                    format!("{s:?} is not a MAC address: {part:?} is not a hex byte")
                })?;
        }
        Ok(Self(mac))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let n: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        assert!(n.is_usable_host("10.244.1.2".parse().unwrap()));
        assert!(!n.is_usable_host("10.244.1.0".parse().unwrap()));
        assert!(!n.is_usable_host("10.244.1.255".parse().unwrap()));
        assert!(!n.is_usable_host("10.244.2.1".parse().unwrap()));
        let big: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        assert!(n.overlaps(&big) && big.overlaps(&n));
        assert!(!n.overlaps(&"10.244.2.0/24".parse().unwrap()));
        assert!("10.244.1.1/24"
            .parse::<Ipv4Net>()
            .unwrap_err()
            .to_string()
            .contains("did you mean 10.244.1.0/24"));
    }

    #[test]
    fn macs_round_trip_and_derive_stably() {
        let m: MacAddr = "02:AB:00:00:00:0b".parse().unwrap();
        assert_eq!(m.to_string(), "02:ab:00:00:00:0b");
        assert!("02:ab:00:00:00".parse::<MacAddr>().is_err());
        assert!("02:ab:00:00:00:0g".parse::<MacAddr>().is_err());
        let d = MacAddr::derived("host-a");
        assert_eq!(d, MacAddr::derived("host-a"));
        assert_ne!(d, MacAddr::derived("host-b"));
        assert_eq!(d.0[0] & 0x03, 0x02, "locally administered unicast");
    }
}
