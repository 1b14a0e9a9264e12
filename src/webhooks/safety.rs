//! URL safety (rule N6): a webhook must not become a way into the cluster's network.
//!
//! - At creation and update, [`check_url`] accepts only absolute `https` URLs with a host, no
//!   credentials and at most 2,048 characters, and [`resolve_public`] resolves the host and
//!   refuses it when any address it resolves to is not public.
//! - At delivery time the check runs again on the addresses actually connected to: the delivery
//!   client resolves names through [`CheckedResolver`], which drops every non-public address,
//!   so reqwest can only connect to checked addresses (a DNS answer that changed since creation,
//!   "DNS rebinding", is caught); an IP-literal URL is checked before sending; redirects are not
//!   followed and no proxy is used.
//! - Not public: unspecified, loopback, private (RFC 1918), link-local (which holds the cloud
//!   metadata address 169.254.169.254), CGNAT (100.64/10), IETF protocol assignments,
//!   documentation and benchmarking ranges, multicast, reserved and broadcast; for IPv6 also
//!   ULA (fc00::/7, e.g. fd00:ec2::254), link-local, site-local, multicast, documentation, and
//!   IPv4 addresses embedded in mapped, NAT64 and 6to4 addresses are judged as IPv4.
//! - `VPP_WEBHOOK_ALLOW_PRIVATE=true` (development and tests) allows `http` and every address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use url::{Host, Url};

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Why a URL is refused (messages name the rule, never a secret: URLs carry none, see
/// [`check_url`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("url is not an absolute URL")]
    NotAUrl,
    #[error("url must be at most {MAX_URL_LEN} characters")]
    TooLong,
    #[error("url must use https")]
    NotHttps,
    #[error("url must use https or http")]
    NotHttp,
    #[error("url must name a host")]
    NoHost,
    #[error("url must not carry credentials (user or password)")]
    Credentials,
    #[error("url's host {0} does not resolve")]
    Unresolvable(String),
    /// The address is kept for the service's own log; the message does not name it (an
    /// answer naming it would let a caller resolve names inside the cluster's network).
    #[error("url's host resolves to a non-public address; webhooks only go to public addresses")]
    NotPublic(IpAddr),
}

/// Checks the shape of a webhook URL (scheme, host, no credentials, length).
pub fn check_url(text: &str, allow_private: bool) -> Result<Url, UrlError> {
    if text.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong);
    }
    let url = Url::parse(text).map_err(|_| UrlError::NotAUrl)?;
    match (url.scheme(), allow_private) {
        ("https", _) => {}
        ("http", true) => {}
        (_, false) => return Err(UrlError::NotHttps),
        (_, true) => return Err(UrlError::NotHttp),
    }
    if url.host().is_none() {
        return Err(UrlError::NoHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    Ok(url)
}

/// Resolves the URL's host and refuses it unless every address is public (or private ones
/// are allowed). Returns the addresses.
pub async fn resolve_public(url: &Url, allow_private: bool) -> Result<Vec<IpAddr>, UrlError> {
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = match url.host() {
        Some(Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
        Some(Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
        Some(Host::Domain(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|_| UrlError::Unresolvable(name.to_owned()))?
            .map(|a| a.ip())
            .collect(),
        None => return Err(UrlError::NoHost),
    };
    if addrs.is_empty() {
        return Err(UrlError::Unresolvable(
            url.host_str().unwrap_or_default().to_owned(),
        ));
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|ip| !is_public(**ip)) {
        return Err(UrlError::NotPublic(*bad));
    }
    Ok(addrs)
}

/// Whether a delivery may connect to `ip`.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    const BLOCKED: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),       // "this network", unspecified
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // CGNAT
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local, cloud metadata
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation
        ([203, 0, 113, 0], 24),  // documentation
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, broadcast
    ];
    !BLOCKED.iter().any(|(net, prefix)| in_v4(ip, *net, *prefix))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // NAT64 (64:ff9b::/96): the IPv4 address in the last 32 bits.
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        return is_public_v4(Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        ));
    }
    // 6to4 (2002::/16): the IPv4 address in bits 16-48.
    if seg[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        ));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // ULA
        || (seg[0] & 0xffc0) == 0xfe80 // link-local
        || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x2001 && seg[1] == 0) // Teredo (2001::/32): tunnels to anywhere
        || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1) // local-use NAT64 (64:ff9b:1::/48)
        || (seg[0] == 0x100 && seg[1..4] == [0, 0, 0]) // discard-only (100::/64)
        || seg[..4] == [0, 0, 0, 0] && seg[4] == 0xffff && seg[5] == 0 // IPv4-translated (::ffff:0:0/96)
        || seg[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated) and the like
}

/// The delivery client's resolver: the system's answer without the addresses a delivery may
/// not connect to (all of them kept when private addresses are allowed).
#[derive(Clone, Debug)]
pub struct CheckedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if kept.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> =
                    Box::new(UrlError::NotPublic(match found.first() {
                        Some(a) => a.ip(),
                        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    }));
                return Err(err);
            }
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// The resolver as reqwest takes it.
pub fn resolver(allow_private: bool) -> Arc<CheckedResolver> {
    Arc::new(CheckedResolver { allow_private })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_with_a_host_and_no_credentials() {
        assert!(check_url("https://hooks.example.com/x", false).is_ok());
        assert_eq!(
            check_url("http://hooks.example.com", false),
            Err(UrlError::NotHttps)
        );
        assert!(check_url("http://hooks.example.com", true).is_ok());
        assert_eq!(check_url("ftp://x.example", true), Err(UrlError::NotHttp));
        assert_eq!(check_url("not a url", false), Err(UrlError::NotAUrl));
        assert_eq!(
            check_url("https://u:p@hooks.example.com", false),
            Err(UrlError::Credentials)
        );
        let long = format!("https://a.example/{}", "x".repeat(MAX_URL_LEN));
        assert_eq!(check_url(&long, false), Err(UrlError::TooLong));
    }

    #[test]
    fn private_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "64:ff9b:1::a00:1",
            "100::1",
            "::ffff:0:a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must not be public");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn literal_private_hosts_are_refused_at_creation() {
        let url = check_url("https://127.0.0.1:8443/hook", false).unwrap();
        assert_eq!(
            resolve_public(&url, false).await,
            Err(UrlError::NotPublic("127.0.0.1".parse().unwrap()))
        );
        let url = check_url("https://[::1]/hook", false).unwrap();
        assert!(resolve_public(&url, false).await.is_err());
        let url = check_url("https://localhost/hook", false).unwrap();
        assert!(resolve_public(&url, false).await.is_err());
        assert!(resolve_public(&url, true).await.is_ok());
    }
}
