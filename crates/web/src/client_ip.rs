//! The client's address: the peer's, unless the peer is a trusted proxy,
//! in which case the configured header names the client. A header from an
//! untrusted peer is ignored, so no client can choose its own address.

use std::net::IpAddr;

use http::HeaderMap;

#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    nets: Vec<ipnet::IpNet>,
    /// e.g. `x-forwarded-for` or `cf-connecting-ip`.
    header: Option<http::HeaderName>,
}

impl TrustedProxies {
    pub fn new(cidrs: &[String], header: Option<&str>) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for c in cidrs {
            let net = c
                .parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("trusted proxy `{c}` is not an IP address or CIDR range"))?;
            nets.push(net);
        }
        let header = header
            .filter(|h| !h.is_empty())
            .map(|h| {
                http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("`{h}` is not a valid header name"))
            })
            .transpose()?;
        Ok(TrustedProxies { nets, header })
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }

    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let Some(h) = &self.header else { return peer };
        if !self.trusted(peer) {
            return peer;
        }
        let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) else {
            return peer;
        };
        // X-Forwarded-For lists hops left to right; the client is the
        // rightmost address that is not one of our proxies.
        for part in v.rsplit(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) if self.trusted(ip) => continue,
                Ok(ip) => return ip,
                Err(_) => return peer,
            }
        }
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_only_from_trusted_peers() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into()], Some("X-Forwarded-For")).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.9, 10.0.0.2".parse().unwrap(),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let outsider: IpAddr = "192.0.2.5".parse().unwrap();
        assert_eq!(
            t.client_ip(proxy, &h),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(t.client_ip(outsider, &h), outsider);
        let none = TrustedProxies::default();
        assert_eq!(none.client_ip(proxy, &h), proxy);
        assert!(TrustedProxies::new(&["nope".into()], None).is_err());
    }
}
