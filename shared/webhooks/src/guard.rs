//! Where webhooks may go. A callback URL must be `https://` (or `http://`), carry no
//! credentials, and resolve only to public addresses: loopback, private, link-local,
//! unique-local, CGNAT, multicast and cloud-metadata addresses are refused unless the host is
//! on the allow-list (`JOBMILL_WEBHOOK_ALLOW`). The check runs at submit time and again right
//! before every send, on the addresses the send then connects to (pinned), so a DNS answer
//! that changes in between (rebinding) cannot slip past it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

use jobmill::error::{Error, Result};

/// Longest callback URL.
pub const MAX_URL_LEN: usize = 2048;

/// Hosts (optionally with a port) allowed to resolve to private addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<(String, Option<u16>)>,
}

impl AllowList {
    /// Parse `host[:port],...` (IPv6 hosts in brackets: `[::1]:8080`).
    pub fn parse(raw: &str) -> std::result::Result<Self, String> {
        let mut entries = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let url = Url::parse(&format!("http://{part}/"))
                .map_err(|_| format!("'{part}' is not a host or host:port"))?;
            let host = url
                .host_str()
                .ok_or_else(|| format!("'{part}' has no host"))?;
            if url.path() != "/" || !url.username().is_empty() || url.query().is_some() {
                return Err(format!("'{part}' must be only a host or host:port"));
            }
            let port = url.port();
            entries.push((normalise(host), port));
        }
        Ok(AllowList { entries })
    }

    /// Whether `url`'s host (and port) is allow-listed.
    pub fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = normalise(host);
        let port = url.port_or_known_default();
        self.entries
            .iter()
            .any(|(h, p)| *h == host && (p.is_none() || *p == port))
    }

    /// No host is allowed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn normalise(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Check a URL's form (not yet where it points). Errors are `invalid_callback_url`.
pub fn parse_url(raw: &str) -> Result<Url> {
    let bad = |why: &str| Error::invalid("invalid_callback_url", format!("callback_url {why}"));
    if raw.len() > MAX_URL_LEN {
        return Err(bad(&format!("is longer than {MAX_URL_LEN} characters")));
    }
    let url = Url::parse(raw).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad("must start with https:// (or http://)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not contain credentials"));
    }
    if url.host().is_none() {
        return Err(bad("has no host"));
    }
    if url.fragment().is_some() {
        return Err(bad("must not have a #fragment"));
    }
    Ok(url)
}

/// Resolve `url`'s host and check every address. Refused addresses are
/// `callback_url_not_allowed`; a host that does not resolve is `invalid_callback_url`.
pub async fn resolve(url: &Url, allow: &AllowList) -> Result<Vec<SocketAddr>> {
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(Host::Domain(d)) => tokio::net::lookup_host((d, port))
            .await
            .map_err(|e| {
                Error::invalid(
                    "invalid_callback_url",
                    format!("callback_url host '{d}' does not resolve: {e}"),
                )
            })?
            .collect(),
        None => return Err(parse_url(url.as_str()).err().unwrap_or(Error::NotFound)),
    };
    if addrs.is_empty() {
        return Err(Error::invalid(
            "invalid_callback_url",
            "callback_url host resolves to no address",
        ));
    }
    if !allow.allows(url) {
        if let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
            return Err(Error::invalid(
                "callback_url_not_allowed",
                format!(
                    "callback_url resolves to {}, a loopback, private, link-local or metadata address; \
                     allow the host with JOBMILL_WEBHOOK_ALLOW if this is intended",
                    bad.ip()
                ),
            ));
        }
    }
    Ok(addrs)
}

/// Addresses a webhook must not reach unless allow-listed.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (fd00::/8 included)
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 64:ff9b::/96 can reach IPv4 inside
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) // AWS metadata v6
                || v6.to_ipv4().is_some_and(|v4| s[5] == 0 && forbidden_v4(v4)) // ::a.b.c.d
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254.0.0/16, includes the 169.254.169.254 metadata service
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || o[0] >= 240 // reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_forbidden() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_forbidden(bad.parse().unwrap()), "{bad}");
        }
        for good in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_forbidden(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn urls_are_checked_for_form() {
        assert!(parse_url("https://example.com/hook").is_ok());
        assert!(parse_url("http://example.com/hook").is_ok());
        for bad in [
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "not a url",
            "https://",
            "file:///etc/passwd",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_list_matches_host_and_optional_port() {
        let a = AllowList::parse("127.0.0.1, hooks.internal:8443,[::1]").unwrap();
        assert!(a.allows(&Url::parse("http://127.0.0.1:9999/x").unwrap()));
        assert!(a.allows(&Url::parse("https://HOOKS.internal:8443/").unwrap()));
        assert!(!a.allows(&Url::parse("https://hooks.internal/").unwrap()));
        assert!(a.allows(&Url::parse("http://[::1]:80/").unwrap()));
        assert!(!a.allows(&Url::parse("http://127.0.0.2/").unwrap()));
        assert!(AllowList::parse("a/b").is_err());
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        let url = parse_url("http://127.0.0.1:1/").unwrap();
        let e = resolve(&url, &AllowList::default()).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidJob {
                    code: "callback_url_not_allowed",
                    ..
                }
            ),
            "{e}"
        );
        let allow = AllowList::parse("127.0.0.1").unwrap();
        assert_eq!(resolve(&url, &allow).await.unwrap().len(), 1);
    }
}
