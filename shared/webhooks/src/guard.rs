//! Where webhooks may go. A callback URL must be `https://` (or `http://`), written plainly
//! (no credentials, no port 0, nothing the URL parser would quietly rewrite), and resolve only
//! to globally reachable addresses: every block of the IANA special-purpose address registries
//! (loopback, private, link-local, shared/CGNAT, documentation, benchmarking, reserved, …),
//! multicast and all IPv6 outside 2000::/3 are refused, after unwrapping any IPv4 address
//! embedded in an IPv6 one, unless the host is on the allow-list (`JOBMILL_WEBHOOK_ALLOW`).
//! When the operator names the only destinations webhooks may reach
//! (`JOBMILL_WEBHOOK_DESTINATIONS`, [`Destinations`]), everything else is refused too.
//!
//! The check runs at submit time and again right before every send, on the addresses the send
//! then connects to (pinned), so a DNS answer that changes in between (rebinding) cannot slip
//! past it.

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
    check_written_form(raw, &url).map_err(bad)?;
    Ok(url)
}

/// Refuse a URL whose host or port the parser would rewrite: what we judge and what we
/// connect to must be what the submitter wrote, so filters in front of us, logs and humans
/// read the same target. `0x7f.1`, `2130706433`, `%31%32%37.0.0.1` and full-width digits all
/// become `127.0.0.1`; `:00080` and `:` vanish; `\` reads as `/`; tabs and newlines are dropped;
/// `http:host` gains its slashes; an empty `@` is no user but is still userinfo.
fn check_written_form(raw: &str, url: &Url) -> std::result::Result<(), &'static str> {
    if raw
        .chars()
        .any(|c| c.is_ascii_control() || c == ' ' || c == '\\')
    {
        return Err("must not contain spaces, control characters or backslashes");
    }
    let prefix = format!("{}://", url.scheme());
    let rest = match raw.get(..prefix.len()) {
        Some(p) if p.eq_ignore_ascii_case(&prefix) => &raw[prefix.len()..],
        _ => return Err("must start with https:// (or http://)"),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("must not contain credentials");
    }
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => match &authority[end + 1..] {
                "" => (&authority[..=end], None),
                p => match p.strip_prefix(':') {
                    Some(p) => (&authority[..=end], Some(p)),
                    None => return Err("has an odd host"),
                },
            },
            None => return Err("has an odd host"),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if let Some(p) = port {
        match parse_port(p) {
            Ok(0) => return Err("must not use port 0"),
            Ok(n) if Some(n) == url.port_or_known_default() => {}
            _ => return Err("has an odd port (write 1-65535, no leading zeros)"),
        }
    }
    match url.host() {
        Some(Host::Ipv4(ip)) if host != ip.to_string() => {
            Err("must write an IPv4 address as four decimal numbers (a.b.c.d)")
        }
        // Non-ASCII names are IDNs, which the parser turns into their `xn--` form; if one
        // turned into an address, the arm above caught it.
        Some(Host::Domain(d)) if host.is_ascii() && !host.eq_ignore_ascii_case(d) => {
            Err("has a host written in an unusual form (percent-encoding?)")
        }
        _ => Ok(()),
    }
}

/// A port written plainly: 1-5 digits, no sign, no leading zero (`0` itself aside).
fn parse_port(p: &str) -> std::result::Result<u16, ()> {
    let plain = !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && (p == "0" || !p.starts_with('0'));
    if !plain {
        return Err(());
    }
    p.parse().map_err(|_| ())
}

/// Resolve `url`'s host and check every address. Refused addresses are
/// `callback_url_not_allowed`; a host or address outside a set `destinations` list is
/// `destination_not_allowed`; a host that does not resolve is `invalid_callback_url`.
pub async fn resolve(
    url: &Url,
    allow: &AllowList,
    destinations: &Destinations,
) -> Result<Vec<SocketAddr>> {
    let port = url.port_or_known_default().unwrap_or(443);
    // A host no destination can match is refused before any DNS query, so a hostile URL cannot
    // even make us look a name up.
    if !destinations.may_permit(url) {
        return Err(destinations.refuse(url, None));
    }
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
    if !destinations.permits(url, &addrs) {
        return Err(destinations.refuse(url, Some(&addrs)));
    }
    if !allow.allows(url) {
        if let Some((ip, why)) = addrs
            .iter()
            .find_map(|a| refusal(a.ip()).map(|why| (a.ip(), why)))
        {
            return Err(Error::invalid(
                "callback_url_not_allowed",
                format!(
                    "callback_url resolves to {ip}, which webhooks may not reach ({why}); \
                     allow the host with JOBMILL_WEBHOOK_ALLOW if this is intended"
                ),
            ));
        }
    }
    Ok(addrs)
}

/// The only places webhooks may go, when the operator names them
/// (`JOBMILL_WEBHOOK_DESTINATIONS`): the egress allow-list security reviews ask for. Empty (the
/// default) restricts nothing beyond the address rules.
///
/// Each entry is a host name, an IP address or a CIDR block, with an optional `:port` (IPv6 in
/// brackets: `[::1]:9000`, `[fd00::/8]:443`). A name entry matches a URL whose host is that
/// name (case-insensitive, exact: no subdomains). An address entry matches a literal IP host,
/// or a name whose resolved addresses *all* fall in address entries, so one extra DNS answer
/// cannot take a delivery elsewhere. The address rules still apply on top: a loopback entry
/// also needs `JOBMILL_WEBHOOK_ALLOW`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destinations {
    entries: Vec<Destination>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Destination {
    to: To,
    /// `None`: any port.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum To {
    /// A lower-case host name without a trailing dot.
    Name(String),
    /// A network (an address is a /32 or /128), host bits zero.
    Net(IpAddr, u8),
}

impl Destinations {
    /// Parse `entry[,entry...]`; blank means no restriction.
    pub fn parse(raw: &str) -> std::result::Result<Self, String> {
        if raw.trim().is_empty() {
            return Ok(Destinations::default());
        }
        let entries = raw
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(parse_destination)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if entries.is_empty() {
            // `,` is a typo, not a wish to lift the restriction.
            return Err("lists no destination".into());
        }
        Ok(Destinations { entries })
    }

    /// Whether destinations are restricted at all.
    pub fn is_restricted(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Whether `url` may still be permitted once its host is resolved: false for a host that no
    /// name entry matches and no address entry can (a literal IP outside them, or a name when
    /// there are only name entries).
    pub fn may_permit(&self, url: &Url) -> bool {
        if !self.is_restricted() {
            return true;
        }
        match url.host() {
            Some(Host::Domain(_)) => {
                self.names(url) || self.entries.iter().any(|e| matches!(e.to, To::Net(..)))
            }
            Some(Host::Ipv4(ip)) => self.nets(IpAddr::V4(ip), url),
            Some(Host::Ipv6(ip)) => self.nets(IpAddr::V6(ip), url),
            None => false,
        }
    }

    /// Whether `url`, whose host resolved to `addrs`, is a permitted destination.
    pub fn permits(&self, url: &Url, addrs: &[SocketAddr]) -> bool {
        if !self.is_restricted() {
            return true;
        }
        match url.host() {
            Some(Host::Domain(_)) if self.names(url) => true,
            Some(Host::Domain(_)) => {
                !addrs.is_empty() && addrs.iter().all(|a| self.nets(a.ip(), url))
            }
            Some(_) => self.may_permit(url),
            None => false,
        }
    }

    /// Whether a name entry matches `url`'s host and port.
    fn names(&self, url: &Url) -> bool {
        let Some(Host::Domain(d)) = url.host() else {
            return false;
        };
        let host = normalise(d);
        let port = url.port_or_known_default();
        self.entries.iter().any(|e| match &e.to {
            To::Name(n) => *n == host && (e.port.is_none() || e.port == port),
            To::Net(..) => false,
        })
    }

    /// Whether an address entry holds `ip` on `url`'s port.
    fn nets(&self, ip: IpAddr, url: &Url) -> bool {
        // `::ffff:127.0.0.1` is 127.0.0.1 on the wire; an entry written either way matches it.
        let ip = ip.to_canonical();
        let port = url.port_or_known_default();
        self.entries.iter().any(|e| match e.to {
            To::Net(net, len) => (e.port.is_none() || e.port == port) && in_net(ip, net, len),
            To::Name(_) => false,
        })
    }

    fn refuse(&self, url: &Url, addrs: Option<&[SocketAddr]>) -> Error {
        let host = url.host_str().unwrap_or("");
        let port = url.port_or_known_default().unwrap_or(0);
        let resolved = match addrs {
            Some(a) if matches!(url.host(), Some(Host::Domain(_))) => {
                let ips: Vec<String> = a.iter().map(|a| a.ip().to_string()).collect();
                format!(" (resolves to {})", ips.join(", "))
            }
            _ => String::new(),
        };
        Error::invalid(
            "destination_not_allowed",
            format!(
                "callback_url {host}:{port}{resolved} is not among the destinations webhooks may \
                 reach (JOBMILL_WEBHOOK_DESTINATIONS)"
            ),
        )
    }
}

fn parse_destination(part: &str) -> std::result::Result<Destination, String> {
    let bad = || format!("'{part}' is not a host, IP address or CIDR with an optional :port");
    let port_of = |p: &str| match parse_port(p) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{part}' has a bad port (1-65535)")),
    };
    let (host, port, bracketed) = if let Some(rest) = part.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => None,
            p => Some(port_of(p.strip_prefix(':').ok_or_else(bad)?)?),
        };
        (inside, port, true)
    } else if part.matches(':').count() > 1 {
        // Bare IPv6: a port needs brackets.
        (part, None, false)
    } else {
        match part.rsplit_once(':') {
            Some((h, p)) => (h, Some(port_of(p)?), false),
            None => (part, None, false),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let to = if let Some((addr, len)) = host.split_once('/') {
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = match len.parse() {
            Ok(n) if n <= max && len.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("'{part}' has a bad prefix length (0-{max})")),
        };
        let net = mask(addr, len);
        if net != addr {
            return Err(format!(
                "'{part}' has bits set past the /{len} prefix; did you mean {net}/{len}?"
            ));
        }
        canonical_net(addr, len)
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        canonical_net(ip, if ip.is_ipv4() { 32 } else { 128 })
    } else if bracketed {
        return Err(bad());
    } else {
        // A host name as the URL parser would read it, written plainly (so `0x7f.1` is not
        // a name that quietly means 127.0.0.1).
        match Url::parse(&format!("http://{host}/"))
            .ok()
            .as_ref()
            .map(Url::host)
        {
            Some(Some(Host::Domain(d))) if host.eq_ignore_ascii_case(d) => To::Name(normalise(d)),
            _ => return Err(bad()),
        }
    };
    Ok(Destination { to, port })
}

/// An address entry as matched: `::ffff:10.0.0.0/104` is `10.0.0.0/8`, since addresses are
/// compared in canonical form.
fn canonical_net(addr: IpAddr, len: u8) -> To {
    match addr {
        IpAddr::V6(v6) if len >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => To::Net(IpAddr::V4(v4), len - 96),
            None => To::Net(addr, len),
        },
        _ => To::Net(addr, len),
    }
}

/// `ip` with the bits past `len` cleared.
fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(len).min(32))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & m))
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(len).min(128))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
        }
    }
}

/// Whether `ip` is in `net/len` (both of one family).
fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    ip.is_ipv4() == net.is_ipv4() && mask(ip, len) == mask(net, len)
}

/// Addresses a webhook must not reach unless allow-listed.
pub fn is_forbidden(ip: IpAddr) -> bool {
    refusal(ip).is_some()
}

/// Why a webhook must not reach `ip` (the registry block it is in), or `None` for a globally
/// reachable address. IPv4 embedded in IPv6 is unwrapped and judged as IPv4 first: those
/// addresses reach the IPv4 host (through the OS, a NAT64 gateway, a 6to4 or Teredo relay).
pub fn refusal(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4).map(str::to_string),
        IpAddr::V6(v6) => {
            if let Some((how, inner)) = embedded_v4(v6) {
                return inner.iter().find_map(|v4| {
                    refusal_v4(*v4).map(|why| format!("{how} address of {v4}: {why}"))
                });
            }
            if let Some(b) = SPECIAL_V6
                .iter()
                .find(|b| in_net(v6.into(), b.net.into(), b.len))
            {
                return Some(b.what.to_string());
            }
            // IANA IPv6 Address Space registry: only 2000::/3 is allocated as global unicast;
            // the rest is reserved by the IETF, unique-local, link-local or multicast.
            if !in_net(v6.into(), GLOBAL_UNICAST_V6.into(), 3) {
                return Some(
                    "outside 2000::/3 global unicast (IANA IPv6 Address Space, RFC 4291)".into(),
                );
            }
            None
        }
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    SPECIAL_V4
        .iter()
        .find(|b| in_net(ip.into(), b.net.into(), b.len))
        .map(|b| b.what)
}

/// The IPv4 address(es) inside an IPv6 address that carries them, with the name of the form.
fn embedded_v4(v6: Ipv6Addr) -> Option<(&'static str, Vec<Ipv4Addr>)> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        // IPv4-mapped ::ffff:a.b.c.d (RFC 4291 2.5.5.2): the OS sends it as IPv4.
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(("IPv4-mapped", vec![v4(hi, lo)])),
        // IPv4-translated ::ffff:0:a.b.c.d (RFC 2765 SIIT).
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some(("IPv4-translated", vec![v4(hi, lo)])),
        // IPv4-compatible ::a.b.c.d (RFC 4291 2.5.5.1, deprecated); `::` and `::1` are not.
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) > (0, 1) => {
            Some(("IPv4-compatible", vec![v4(hi, lo)]))
        }
        // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052): a translator forwards to the IPv4.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(("NAT64", vec![v4(hi, lo)])),
        // 6to4 2002:AABB:CCDD::/48 (RFC 3056): relays deliver to AA.BB.CC.DD.
        [0x2002, hi, lo, ..] => Some(("6to4", vec![v4(hi, lo)])),
        // Teredo 2001:0::/32 (RFC 4380): server in bits 32-63, client (obfuscated, XOR
        // 0xffffffff) in the last 32 bits; the relay sends to the client's.
        [0x2001, 0, shi, slo, _, _, chi, clo] => {
            Some(("Teredo", vec![v4(!chi, !clo), v4(shi, slo)]))
        }
        _ => None,
    }
}

/// One address block a webhook must not reach.
struct Block<A> {
    net: A,
    len: u8,
    /// The registry entry's name and RFC, shown in the refusal.
    what: &'static str,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8, what: &'static str) -> Block<Ipv4Addr> {
    Block {
        net: Ipv4Addr::new(a, b, c, d),
        len,
        what,
    }
}

const fn v6(s: [u16; 8], len: u8, what: &'static str) -> Block<Ipv6Addr> {
    Block {
        net: Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
        what,
    }
}

/// Every block of the IANA IPv4 Special-Purpose Address Registry
/// (<https://www.iana.org/assignments/iana-ipv4-special-registry>, RFC 6890), plus multicast
/// from the IPv4 Multicast Address Space registry. The few blocks the registry marks globally
/// reachable (192.0.0.9 PCP and 192.0.0.10 TURN anycast inside 192.0.0.0/24, AS112, AMT) are
/// refused too: they are anycast services answered by the nearest instance, which may sit in
/// our own network, and no webhook receiver lives there.
const SPECIAL_V4: &[Block<Ipv4Addr>] = &[
    v4(0, 0, 0, 0, 8, "\"this network\", RFC 791"),
    v4(10, 0, 0, 0, 8, "private-use, RFC 1918"),
    v4(100, 64, 0, 0, 10, "shared address space (CGNAT), RFC 6598"),
    v4(127, 0, 0, 0, 8, "loopback, RFC 1122"),
    // Includes the cloud metadata service 169.254.169.254.
    v4(169, 254, 0, 0, 16, "link-local, RFC 3927"),
    v4(172, 16, 0, 0, 12, "private-use, RFC 1918"),
    // DS-Lite 192.0.0.0/29, dummy 192.0.0.8, PCP/TURN anycast, NAT64 discovery 192.0.0.170-171.
    v4(192, 0, 0, 0, 24, "IETF protocol assignments, RFC 6890"),
    v4(192, 0, 2, 0, 24, "documentation (TEST-NET-1), RFC 5737"),
    v4(192, 31, 196, 0, 24, "AS112-v4 anycast, RFC 7535"),
    v4(192, 52, 193, 0, 24, "AMT anycast, RFC 7450"),
    v4(
        192,
        88,
        99,
        0,
        24,
        "deprecated 6to4 relay anycast, RFC 7526",
    ),
    v4(192, 168, 0, 0, 16, "private-use, RFC 1918"),
    v4(192, 175, 48, 0, 24, "AS112 direct delegation, RFC 7534"),
    v4(198, 18, 0, 0, 15, "benchmarking, RFC 2544"),
    v4(198, 51, 100, 0, 24, "documentation (TEST-NET-2), RFC 5737"),
    v4(203, 0, 113, 0, 24, "documentation (TEST-NET-3), RFC 5737"),
    v4(224, 0, 0, 0, 4, "multicast, RFC 5771"),
    // Inside 240.0.0.0/4, listed first so the refusal names it.
    v4(255, 255, 255, 255, 32, "limited broadcast, RFC 919"),
    v4(240, 0, 0, 0, 4, "reserved, RFC 1112"),
];

/// Every block of the IANA IPv6 Special-Purpose Address Registry
/// (<https://www.iana.org/assignments/iana-ipv6-special-registry>, RFC 6890) that
/// [`embedded_v4`] has not already unwrapped (IPv4-mapped ::ffff:0:0/96, NAT64 64:ff9b::/96,
/// Teredo 2001::/32, 6to4 2002::/16), plus the deprecated site-local block. Blocks outside
/// 2000::/3 are listed for a precise refusal; the rest of that space is refused anyway. As for
/// IPv4, the anycast blocks marked globally reachable inside 2001::/23 (PCP, TURN, DNS-SD SRP,
/// AMT, AS112) and the ORCHIDv2 and DET identifier blocks are refused with it, and so is the
/// AS112 direct delegation block.
const SPECIAL_V6: &[Block<Ipv6Addr>] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified, RFC 4291"),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback, RFC 4291"),
    v6(
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "local-use IPv4/IPv6 translation, RFC 8215",
    ),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only, RFC 6666"),
    v6(
        [0x100, 0, 0, 1, 0, 0, 0, 0],
        64,
        "dummy IPv6 prefix, RFC 9780",
    ),
    v6(
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "IETF protocol assignments, RFC 2928",
    ),
    v6(
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "documentation, RFC 3849",
    ),
    v6(
        [0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0],
        48,
        "AS112 direct delegation, RFC 7534",
    ),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation, RFC 9637"),
    v6(
        [0x5f00, 0, 0, 0, 0, 0, 0, 0],
        16,
        "segment routing (SRv6) SIDs, RFC 9602",
    ),
    // Includes the AWS metadata service fd00:ec2::254.
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique-local, RFC 4193"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local, RFC 4291"),
    v6(
        [0xfec0, 0, 0, 0, 0, 0, 0, 0],
        10,
        "site-local (deprecated), RFC 3879",
    ),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast, RFC 4291"),
];

/// 2000::/3, the only IPv6 space IANA allocates as global unicast.
const GLOBAL_UNICAST_V6: Ipv6Addr = Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0);

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn at(addrs: &[&str], port: u16) -> Vec<SocketAddr> {
        addrs.iter().map(|a| SocketAddr::new(ip(a), port)).collect()
    }

    fn code(e: &Error) -> &'static str {
        match e {
            Error::InvalidJob { code, .. } => code,
            _ => "(not InvalidJob)",
        }
    }

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
            assert!(is_forbidden(ip(bad)), "{bad}");
        }
        for good in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_forbidden(ip(good)), "{good}");
        }
    }

    /// One address from every registry block, and neighbours just outside some of them.
    #[test]
    fn the_special_purpose_registries_are_refused_block_by_block() {
        for (bad, why) in [
            ("0.1.2.3", "this network"),
            ("10.255.255.255", "private-use"),
            ("100.64.0.1", "shared address space"),
            ("100.127.255.255", "shared address space"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "link-local"),
            ("172.31.255.255", "private-use"),
            ("192.0.0.1", "IETF protocol"),
            ("192.0.0.9", "IETF protocol"),
            ("192.0.0.170", "IETF protocol"),
            ("192.0.2.1", "TEST-NET-1"),
            ("192.31.196.1", "AS112"),
            ("192.52.193.1", "AMT"),
            ("192.88.99.1", "6to4 relay"),
            ("192.168.0.1", "private-use"),
            ("192.175.48.1", "AS112"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.1", "TEST-NET-2"),
            ("203.0.113.1", "TEST-NET-3"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "limited broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("64:ff9b:1::1", "local-use"),
            ("100::1", "discard-only"),
            ("100:0:0:1::1", "dummy"),
            ("2001:1::1", "IETF protocol"),
            ("2001:2::1", "IETF protocol"),
            ("2001:10::1", "IETF protocol"),
            ("2001:1ff::1", "IETF protocol"),
            ("2001:db8::1", "documentation"),
            ("2620:4f:8000::1", "AS112"),
            ("3fff::1", "documentation"),
            ("5f00::1", "SRv6"),
            ("fc00::1", "unique-local"),
            ("fdff::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("4000::1", "2000::/3"),
            ("1::1", "2000::/3"),
        ] {
            let r = refusal(ip(bad));
            assert!(
                r.as_deref().is_some_and(|r| r.contains(why)),
                "{bad}: {r:?}"
            );
        }
        for good in [
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2001:200::1",
            "2001:4860:4860::8888",
            "2a00:1450::1",
            "3ffe::1",
        ] {
            assert_eq!(refusal(ip(good)), None, "{good}");
        }
    }

    #[test]
    fn ipv4_inside_ipv6_is_unwrapped_before_judging() {
        for (bad, why) in [
            (
                "::ffff:127.0.0.1",
                "IPv4-mapped address of 127.0.0.1: loopback",
            ),
            (
                "::ffff:0:7f00:1",
                "IPv4-translated address of 127.0.0.1: loopback",
            ),
            (
                "::ffff:0:a9fe:a9fe",
                "IPv4-translated address of 169.254.169.254",
            ),
            ("::7f00:1", "IPv4-compatible address of 127.0.0.1"),
            ("::10.0.0.1", "IPv4-compatible address of 10.0.0.1"),
            ("64:ff9b::7f00:1", "NAT64 address of 127.0.0.1"),
            ("64:ff9b::a9fe:a9fe", "NAT64 address of 169.254.169.254"),
            ("2002:7f00:1::", "6to4 address of 127.0.0.1: loopback"),
            ("2002:a00:1::1", "6to4 address of 10.0.0.1"),
            // Teredo client 127.0.0.1 (obfuscated: 0x80ff:fffe), public server 1.1.1.1.
            ("2001:0:101:101::80ff:fffe", "Teredo address of 127.0.0.1"),
            // Teredo server 10.0.0.1, public client 1.1.1.1 (0xfefe:fefe).
            ("2001:0:a00:1::fefe:fefe", "Teredo address of 10.0.0.1"),
        ] {
            let r = refusal(ip(bad));
            assert!(
                r.as_deref().is_some_and(|r| r.contains(why)),
                "{bad}: {r:?}"
            );
        }
        // Wrapping a public address is as public as the address itself.
        for good in [
            "::ffff:1.1.1.1",
            "::ffff:0:101:101",
            "64:ff9b::101:101",
            "2002:101:101::1",
            "2001:0:101:101::fefe:fefe",
        ] {
            assert_eq!(refusal(ip(good)), None, "{good}");
        }
    }

    #[test]
    fn the_tables_are_written_as_networks() {
        for b in SPECIAL_V4 {
            assert!(b.len <= 32, "{}", b.what);
            assert_eq!(mask(b.net.into(), b.len), IpAddr::from(b.net), "{}", b.what);
        }
        for b in SPECIAL_V6 {
            assert!(b.len <= 128, "{}", b.what);
            assert_eq!(mask(b.net.into(), b.len), IpAddr::from(b.net), "{}", b.what);
        }
    }

    #[test]
    fn urls_are_checked_for_form() {
        for good in [
            "https://example.com/hook",
            "http://example.com/hook",
            "HTTPS://Example.COM./hook?a=1",
            "https://example.com:443/",
            "http://example.com:8080/x",
            "http://127.0.0.1:9/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
            "https://bücher.example/",
        ] {
            assert!(parse_url(good).is_ok(), "{good}: {:?}", parse_url(good));
        }
        for (bad, why) in [
            ("ftp://example.com/", "https://"),
            ("https://user:pw@example.com/", "credentials"),
            ("https://user@example.com/", "credentials"),
            ("https://@example.com/", "credentials"),
            ("https://:@example.com/", "credentials"),
            ("not a url", "not a URL"),
            ("https://", "not a URL"),
            ("file:///etc/passwd", "https://"),
            ("https://1.1.1.1:0/", "port 0"),
            ("http://[::1]:0/", "port 0"),
            ("http://host:00080/", "odd port"),
            ("http://host:0080/", "odd port"),
            ("http://host:/", "odd port"),
            ("http://host:65536/", "not a URL"),
            ("http://0x7f.1/", "four decimal numbers"),
            ("http://2130706433/", "four decimal numbers"),
            ("http://0177.0.0.1/", "four decimal numbers"),
            ("http://127.1/", "four decimal numbers"),
            ("http://%31%32%37.0.0.1/", "four decimal numbers"),
            ("http://１２７.0.0.1/", "four decimal numbers"),
            ("http://exa%6dple.com/", "unusual form"),
            ("http:example.com/", "https://"),
            ("http:/example.com/", "https://"),
            ("http:///example.com/", "no host"),
            ("http://example.com\\@127.0.0.1/", "backslash"),
            ("http://ex\tample.com/", "control"),
            (" http://example.com/", "spaces"),
            ("http://example.com/#x", "fragment"),
        ] {
            let e = parse_url(bad).unwrap_err();
            assert_eq!(code(&e), "invalid_callback_url", "{bad}");
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(parse_url(&long).is_err());
    }

    #[test]
    fn allow_list_matches_host_and_optional_port() {
        let a = AllowList::parse("127.0.0.1, hooks.internal:8443,[::1]").unwrap();
        assert!(a.allows(&url("http://127.0.0.1:9999/x")));
        assert!(a.allows(&url("https://HOOKS.internal:8443/")));
        assert!(!a.allows(&url("https://hooks.internal/")));
        assert!(a.allows(&url("http://[::1]:80/")));
        assert!(!a.allows(&url("http://127.0.0.2/")));
        assert!(AllowList::parse("a/b").is_err());
    }

    #[test]
    fn destinations_parse_hosts_addresses_and_networks() {
        let d = Destinations::parse(
            " hooks.example.com:443, Other.Example., 127.0.0.1, 10.0.0.0/8, [::1]:9000, \
             fd00::/8, [2001:db8::/32]:443, 192.168.1.1:8080, ::ffff:172.16.0.0/108",
        )
        .unwrap();
        assert!(d.is_restricted());
        let want = [
            (To::Name("hooks.example.com".into()), Some(443)),
            (To::Name("other.example".into()), None),
            (To::Net(ip("127.0.0.1"), 32), None),
            (To::Net(ip("10.0.0.0"), 8), None),
            (To::Net(ip("::1"), 128), Some(9000)),
            (To::Net(ip("fd00::"), 8), None),
            (To::Net(ip("2001:db8::"), 32), Some(443)),
            (To::Net(ip("192.168.1.1"), 32), Some(8080)),
            (To::Net(ip("172.16.0.0"), 12), None),
        ];
        let got: Vec<(To, Option<u16>)> =
            d.entries.iter().map(|e| (e.to.clone(), e.port)).collect();
        assert_eq!(got, want);

        assert!(!Destinations::parse("").unwrap().is_restricted());
        assert!(!Destinations::parse("  ").unwrap().is_restricted());
        for (bad, why) in [
            (",", "no destination"),
            ("hooks.example.com:0", "bad port"),
            ("hooks.example.com:", "bad port"),
            ("hooks.example.com:080", "bad port"),
            ("hooks.example.com:70000", "bad port"),
            ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
            ("10.0.0.0/33", "prefix length"),
            ("10.0.0.0/", "prefix length"),
            ("10.0.0.0/+8", "prefix length"),
            ("[::1", "not a host"),
            ("[::1]x", "not a host"),
            ("[hooks.example.com]", "not a host"),
            ("::1:80:x", "not a host"),
            ("0x7f.1", "not a host"),
            ("a/b", "not a host"),
            ("user@host", "not a host"),
            ("http://host", "'http://host'"),
            ("ho st", "not a host"),
        ] {
            let e = Destinations::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn destinations_match_names_exactly_and_every_resolved_address() {
        let d =
            Destinations::parse("hooks.example.com:443,127.0.0.1:9000,10.0.0.0/8,[::1]").unwrap();
        let yes = |u: &str, a: &[&str]| d.permits(&url(u), &at(a, 0));
        // Names: exact, case-insensitive, trailing dot ignored, port checked, no subdomains.
        assert!(yes("https://hooks.example.com/x", &["93.184.216.34"]));
        assert!(yes("https://HOOKS.example.com./x", &["93.184.216.34"]));
        assert!(!yes("http://hooks.example.com/x", &["93.184.216.34"]));
        assert!(!yes("https://a.hooks.example.com/", &["93.184.216.34"]));
        assert!(!yes("https://example.com/", &["93.184.216.34"]));
        // Literal addresses, with and without a port in the entry.
        assert!(yes("http://127.0.0.1:9000/", &["127.0.0.1"]));
        assert!(!yes("http://127.0.0.1:9001/", &["127.0.0.1"]));
        assert!(!yes("http://127.0.0.1/", &["127.0.0.1"]));
        assert!(yes("http://10.9.8.7:1234/", &["10.9.8.7"]));
        assert!(!yes("http://11.0.0.1/", &["11.0.0.1"]));
        assert!(yes("http://[::1]:1/", &["::1"]));
        assert!(yes("http://[::ffff:10.1.1.1]/", &["::ffff:10.1.1.1"]));
        // A name not listed: every address it resolves to must be in an address entry.
        assert!(yes(
            "http://internal.example:80/",
            &["10.0.0.1", "10.0.0.2"]
        ));
        assert!(!yes(
            "http://internal.example:80/",
            &["10.0.0.1", "11.0.0.1"]
        ));
        assert!(!yes("http://internal.example:80/", &[]));
        assert!(yes("http://localhost:9000/", &["127.0.0.1"]));
        assert!(!yes("http://localhost:9000/", &["127.0.0.1", "::2"]));
        // Unrestricted: anything.
        let none = Destinations::default();
        assert!(none.permits(&url("https://example.com/"), &at(&["1.1.1.1"], 443)));
        assert!(none.may_permit(&url("https://example.com/")));

        // Before a lookup: a name is worth resolving only if an address entry could match it.
        assert!(d.may_permit(&url("https://elsewhere.example/")));
        assert!(!d.may_permit(&url("http://11.0.0.1/")));
        let names = Destinations::parse("hooks.example.com").unwrap();
        assert!(names.may_permit(&url("https://hooks.example.com/")));
        assert!(!names.may_permit(&url("https://elsewhere.example/")));
        assert!(!names.may_permit(&url("https://127.0.0.1/")));
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        let url = parse_url("http://127.0.0.1:1/").unwrap();
        let none = Destinations::default();
        let e = resolve(&url, &AllowList::default(), &none)
            .await
            .unwrap_err();
        assert_eq!(code(&e), "callback_url_not_allowed", "{e}");
        let allow = AllowList::parse("127.0.0.1").unwrap();
        assert_eq!(resolve(&url, &allow, &none).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_hostile_urls_of_the_report_are_refused() {
        let (allow, none) = (AllowList::default(), Destinations::default());
        for (raw, want) in [
            ("http://[2002:7f00:1::]/", "callback_url_not_allowed"),
            ("http://[::ffff:0:7f00:1]/", "callback_url_not_allowed"),
            ("http://[100::1]/", "callback_url_not_allowed"),
            ("http://[64:ff9b::a9fe:a9fe]/", "callback_url_not_allowed"),
            (
                "http://[2001:0:101:101::80ff:fffe]/",
                "callback_url_not_allowed",
            ),
            ("http://[::7f00:1]/", "callback_url_not_allowed"),
            ("http://0x7f.1/", "invalid_callback_url"),
            ("https://1.1.1.1:0/", "invalid_callback_url"),
            ("http://host:00080/", "invalid_callback_url"),
            ("http://@127.0.0.1/", "invalid_callback_url"),
        ] {
            let e = match parse_url(raw) {
                Ok(u) => resolve(&u, &allow, &none).await.unwrap_err(),
                Err(e) => e,
            };
            assert_eq!(code(&e), want, "{raw}: {e}");
        }
    }

    #[tokio::test]
    async fn destinations_are_enforced_by_resolve_before_the_address_rules() {
        let allow = AllowList::parse("127.0.0.1").unwrap();
        let dest = Destinations::parse("127.0.0.1:9000,hooks.example.com").unwrap();
        let ok = parse_url("http://127.0.0.1:9000/").unwrap();
        assert_eq!(resolve(&ok, &allow, &dest).await.unwrap().len(), 1);
        for raw in [
            "http://127.0.0.1:9001/",
            "http://10.0.0.1:9000/",
            "https://1.1.1.1/",
        ] {
            let e = resolve(&parse_url(raw).unwrap(), &allow, &dest)
                .await
                .unwrap_err();
            assert_eq!(code(&e), "destination_not_allowed", "{raw}: {e}");
            assert!(
                e.to_string().contains("JOBMILL_WEBHOOK_DESTINATIONS"),
                "{e}"
            );
        }
        // Not even looked up: only a name entry could match a name, and none does.
        let names = Destinations::parse("hooks.example.com").unwrap();
        let e = resolve(
            &parse_url("https://elsewhere.invalid/").unwrap(),
            &allow,
            &names,
        )
        .await
        .unwrap_err();
        assert_eq!(code(&e), "destination_not_allowed", "{e}");
        // A destination still needs the address rules: loopback without the allow-list.
        let e = resolve(&ok, &AllowList::default(), &dest)
            .await
            .unwrap_err();
        assert_eq!(code(&e), "callback_url_not_allowed", "{e}");
    }
}
