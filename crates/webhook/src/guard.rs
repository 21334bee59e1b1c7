//! The SSRF guard: which addresses a webhook may be delivered to.
//!
//! A tenant chooses the URL, so without a guard a subscription could make our workers POST to the cloud
//! metadata service (`169.254.169.254`), to NATS on loopback or to anything on the private network. The guard
//! has three parts:
//!
//! - [`AddrPolicy`]: the configuration and [`AddrPolicy::is_allowed`], which classifies an IP address
//!   ([`classify`] → [`AddrClass`]) and refuses every non-public class unless the policy allows it.
//! - [`AddrPolicy::check_url`]: the syntax check the API runs when a subscription is created (scheme, host, no
//!   userinfo, literal IP hosts and `localhost` names checked at once). Its errors carry a stable
//!   [`GuardError::code`] for the API's `{"error": "<code>"}` body.
//! - [`GuardedResolver`]: a [`reqwest::dns::Resolve`] that resolves with the system resolver and returns only
//!   the allowed addresses, so the HTTP client connects exactly to an address that passed the check (a name
//!   that resolves to a public address when the API checks it and to `127.0.0.1` when the worker connects —
//!   DNS rebinding — is refused at connect time). Literal IP hosts never reach a resolver: the sender checks
//!   them with [`AddrPolicy::check_url`] before every request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use url::{Host, Url};

/// Which destination addresses webhooks may be delivered to. The default refuses every address that is not
/// public unicast.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AddrPolicy {
    /// Allow loopback addresses (`127.0.0.0/8`, `::1`, and the names `localhost` / `*.localhost`). For local
    /// development and tests only: a worker's loopback reaches NATS and the ops server.
    pub allow_loopback: bool,
    /// Allow private addresses: RFC 1918 (`10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`) and IPv6 unique
    /// local addresses (`fc00::/7`). For deployments whose receivers live on the same private network.
    pub allow_private: bool,
    /// Networks in CIDR notation (`10.1.2.0/24`, `fd00::/8`, `203.0.113.7/32`) that are allowed whatever their
    /// class; every other non-public address stays refused.
    #[schemars(with = "Vec<String>")]
    pub allow: Vec<IpNet>,
}

/// What kind of address an IP address is, for the guard's decision and its error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrClass {
    /// Public unicast: always allowed.
    Public,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918 and `fc00::/7`.
    Private,
    /// `169.254.0.0/16` (the cloud metadata address `169.254.169.254` among them), `fe80::/10`.
    LinkLocal,
    /// `100.64.0.0/10`, carrier-grade NAT (RFC 6598).
    SharedCgnat,
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `0.0.0.0/8` other than `0.0.0.0`: "this network".
    ThisNetwork,
    /// `255.255.255.255`.
    Broadcast,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`.
    Documentation,
    /// Other special-purpose ranges: `192.0.0.0/24`, `192.88.99.0/24`, `198.18.0.0/15`, `240.0.0.0/4`,
    /// IPv6 site-local `fec0::/10`, discard-only `100::/64`, the IPv4-compatible `::/96`.
    Reserved,
}

impl AddrClass {
    /// A short name for messages and logs (`loopback`, `link_local`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::LinkLocal => "link_local",
            AddrClass::SharedCgnat => "shared_cgnat",
            AddrClass::Unspecified => "unspecified",
            AddrClass::ThisNetwork => "this_network",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Multicast => "multicast",
            AddrClass::Documentation => "documentation",
            AddrClass::Reserved => "reserved",
        }
    }
}

/// The class of `ip`. An IPv6 address that embeds an IPv4 address — IPv4-mapped `::ffff:a.b.c.d`, the
/// NAT64 well-known prefix `64:ff9b::/96` and 6to4 `2002::/16` — has the class of the embedded address, since a
/// connection to it may reach that IPv4 address.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let [a, b, c, _] = ip.octets();
    if ip.is_unspecified() {
        AddrClass::Unspecified
    } else if a == 0 {
        AddrClass::ThisNetwork
    } else if ip.is_loopback() {
        AddrClass::Loopback
    } else if ip.is_private() {
        AddrClass::Private
    } else if ip.is_link_local() {
        AddrClass::LinkLocal
    } else if a == 100 && (b & 0xc0) == 64 {
        AddrClass::SharedCgnat
    } else if ip.is_broadcast() {
        AddrClass::Broadcast
    } else if ip.is_multicast() {
        AddrClass::Multicast
    } else if ip.is_documentation() {
        AddrClass::Documentation
    } else if (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 88 && c == 99)
        || (a == 198 && (b & 0xfe) == 18)
        || a >= 240
    {
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let seg = ip.segments();
    if ip.is_unspecified() {
        AddrClass::Unspecified
    } else if ip.is_loopback() {
        AddrClass::Loopback
    } else if ip.is_multicast() {
        AddrClass::Multicast
    } else if (seg[0] & 0xfe00) == 0xfc00 {
        AddrClass::Private
    } else if (seg[0] & 0xffc0) == 0xfe80 {
        AddrClass::LinkLocal
    } else if (seg[0] & 0xffc0) == 0xfec0 {
        AddrClass::Reserved
    } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        AddrClass::Documentation
    } else if seg[0] == 0x0100 && seg[1..4] == [0, 0, 0] {
        AddrClass::Reserved
    } else if seg[..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated), `::` and `::1` were handled above.
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

/// The IPv4 address embedded in an IPv4-mapped (`::ffff:0:0/96`), NAT64 (`64:ff9b::/96`) or 6to4
/// (`2002::/16`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let seg = ip.segments();
    let o = ip.octets();
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

/// Why a URL or an address was refused. [`GuardError::code`] is the stable code for API error bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// Not a URL at all.
    #[error("not a valid URL: {0}")]
    Parse(#[source] url::ParseError),
    /// A scheme other than `http` / `https`.
    #[error("scheme {0:?} is not allowed: use http or https")]
    Scheme(String),
    /// No host (`http:///path` cannot be written, but e.g. `unix:` forms can).
    #[error("the URL has no host")]
    MissingHost,
    /// `user:password@` in the URL: credentials belong in the receiver's own configuration, and a userinfo part
    /// is a classic way to disguise the real host.
    #[error("the URL must not contain a user name or password")]
    Userinfo,
    /// The host is an IP address (or `localhost`) of a refused class.
    #[error("address {addr} ({class}) is not allowed as a webhook destination", class = .class.as_str())]
    AddressNotAllowed {
        /// The refused address.
        addr: IpAddr,
        /// Its class.
        class: AddrClass,
    },
    /// The host name resolved, but to refused addresses only.
    #[error("{host} resolves to no allowed address (refused: {refused:?})")]
    NoAllowedAddress {
        /// The name.
        host: String,
        /// What it resolved to.
        refused: Vec<IpAddr>,
    },
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {message}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's message.
        message: String,
    },
}

impl GuardError {
    /// The stable error code: `bad_url` for a malformed or unsupported URL, `url_not_allowed` for a refused
    /// destination, `dns_failed` for a name that does not resolve.
    pub fn code(&self) -> &'static str {
        match self {
            GuardError::Parse(_)
            | GuardError::Scheme(_)
            | GuardError::MissingHost
            | GuardError::Userinfo => "bad_url",
            GuardError::AddressNotAllowed { .. } | GuardError::NoAllowedAddress { .. } => {
                "url_not_allowed"
            }
            GuardError::Resolve { .. } => "dns_failed",
        }
    }
}

impl AddrPolicy {
    /// The policy of local development and tests: loopback and private addresses allowed.
    pub fn permissive() -> Self {
        AddrPolicy {
            allow_loopback: true,
            allow_private: true,
            allow: Vec::new(),
        }
    }

    /// Whether a webhook may be delivered to `ip`: public unicast addresses always, loopback and private ones
    /// when the policy says so, anything inside an [`AddrPolicy::allow`] network; every other class never.
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        self.refusal(ip).is_none()
    }

    /// `None` when `ip` is allowed, else its class.
    fn refusal(&self, ip: IpAddr) -> Option<AddrClass> {
        let class = classify(ip);
        let allowed = match class {
            AddrClass::Public => true,
            AddrClass::Loopback => self.allow_loopback,
            AddrClass::Private => self.allow_private,
            _ => false,
        };
        if allowed || self.in_allow_list(ip) {
            None
        } else {
            Some(class)
        }
    }

    fn in_allow_list(&self, ip: IpAddr) -> bool {
        let mapped = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow
            .iter()
            .any(|net| net.contains(&ip) || mapped.is_some_and(|v4| net.contains(&v4)))
    }

    /// Checks `ip` and says why it is refused.
    ///
    /// # Errors
    /// [`GuardError::AddressNotAllowed`] when the policy refuses it.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), GuardError> {
        match self.refusal(ip) {
            None => Ok(()),
            Some(class) => Err(GuardError::AddressNotAllowed { addr: ip, class }),
        }
    }

    /// Checks a webhook URL without resolving it: it parses, its scheme is `http` or `https`, it has a host and
    /// no user name or password, a literal IP host is allowed, and the names `localhost` / `*.localhost` (which
    /// always mean loopback, RFC 6761) only pass when loopback is allowed. Names are resolved — and their
    /// addresses checked — only when connecting ([`GuardedResolver`]).
    ///
    /// # Errors
    /// A [`GuardError`] whose [`GuardError::code`] is `bad_url` or `url_not_allowed`.
    pub fn check_url(&self, url: &str) -> Result<Url, GuardError> {
        let parsed = Url::parse(url).map_err(GuardError::Parse)?;
        match parsed.scheme() {
            "http" | "https" => {}
            other => return Err(GuardError::Scheme(other.to_owned())),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(GuardError::Userinfo);
        }
        match parsed.host() {
            None => return Err(GuardError::MissingHost),
            Some(Host::Ipv4(v4)) => self.check_ip(IpAddr::V4(v4))?,
            Some(Host::Ipv6(v6)) => self.check_ip(IpAddr::V6(v6))?,
            Some(Host::Domain(name)) => {
                let name = name.trim_end_matches('.');
                if name.is_empty() {
                    return Err(GuardError::MissingHost);
                }
                if (name == "localhost" || name.ends_with(".localhost")) && !self.allow_loopback {
                    return Err(GuardError::AddressNotAllowed {
                        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        class: AddrClass::Loopback,
                    });
                }
            }
        }
        Ok(parsed)
    }

    /// A resolver for reqwest that applies this policy.
    pub fn resolver(&self) -> GuardedResolver {
        GuardedResolver {
            policy: Arc::new(self.clone()),
        }
    }

    /// A reqwest client builder with this policy's [`GuardedResolver`], no proxy (a proxy would connect on our
    /// behalf to an address we never checked) and no redirects (a redirect target is a second, unchecked URL).
    ///
    /// A literal IP host never reaches a resolver, so requests must still go to URLs that passed
    /// [`AddrPolicy::check_url`] (the sender checks every URL before its request).
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(self.resolver()))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
    }
}

/// A [`reqwest::dns::Resolve`] that resolves with the system resolver (`getaddrinfo` through tokio) and
/// returns only the addresses its [`AddrPolicy`] allows; a name with none fails with
/// [`GuardError::NoAllowedAddress`], so the client never connects to a refused address.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    policy: Arc<AddrPolicy>,
}

impl GuardedResolver {
    /// Resolves `host` and keeps the allowed addresses (port 0; the client sets the URL's port).
    ///
    /// # Errors
    /// [`GuardError::Resolve`] when the name does not resolve, [`GuardError::NoAllowedAddress`] when it resolves
    /// to refused addresses only.
    pub async fn resolve_allowed(&self, host: &str) -> Result<Vec<SocketAddr>, GuardError> {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| GuardError::Resolve {
                host: host.to_owned(),
                message: e.to_string(),
            })?
            .collect();
        let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
            .into_iter()
            .partition(|addr| self.policy.is_allowed(addr.ip()));
        if allowed.is_empty() {
            tracing::debug!(host, refused = ?refused, "webhook host resolves to no allowed address");
            return Err(GuardError::NoAllowedAddress {
                host: host.to_owned(),
                refused: refused.iter().map(SocketAddr::ip).collect(),
            });
        }
        Ok(allowed)
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = this.resolve_allowed(&host).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The guard error behind a failed request, if the guard refused it (walks the error's sources).
pub fn guard_error_of<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a GuardError> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(guard) = e.downcast_ref::<GuardError>() {
            return Some(guard);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn every_special_range_is_refused_by_default() {
        let policy = AddrPolicy::default();
        let cases = [
            ("127.0.0.1", AddrClass::Loopback),
            ("127.255.255.254", AddrClass::Loopback),
            ("::1", AddrClass::Loopback),
            ("10.0.0.1", AddrClass::Private),
            ("10.255.255.255", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.31.255.255", AddrClass::Private),
            ("192.168.1.1", AddrClass::Private),
            ("fc00::1", AddrClass::Private),
            ("fdff:ffff::1", AddrClass::Private),
            ("169.254.169.254", AddrClass::LinkLocal),
            ("169.254.0.1", AddrClass::LinkLocal),
            ("fe80::1", AddrClass::LinkLocal),
            ("febf::1", AddrClass::LinkLocal),
            ("0.0.0.0", AddrClass::Unspecified),
            ("::", AddrClass::Unspecified),
            ("0.1.2.3", AddrClass::ThisNetwork),
            ("255.255.255.255", AddrClass::Broadcast),
            ("224.0.0.1", AddrClass::Multicast),
            ("239.255.255.250", AddrClass::Multicast),
            ("ff02::1", AddrClass::Multicast),
            ("100.64.0.1", AddrClass::SharedCgnat),
            ("100.127.255.255", AddrClass::SharedCgnat),
            ("192.0.2.1", AddrClass::Documentation),
            ("198.51.100.1", AddrClass::Documentation),
            ("203.0.113.1", AddrClass::Documentation),
            ("2001:db8::1", AddrClass::Documentation),
            ("192.0.0.8", AddrClass::Reserved),
            ("198.18.0.1", AddrClass::Reserved),
            ("198.19.255.255", AddrClass::Reserved),
            ("240.0.0.1", AddrClass::Reserved),
            ("fec0::1", AddrClass::Reserved),
            ("100::1", AddrClass::Reserved),
            ("::7f00:1", AddrClass::Reserved),
            // IPv6 forms that embed an IPv4 address take the embedded address's class.
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::ffff:169.254.169.254", AddrClass::LinkLocal),
            ("::ffff:10.1.2.3", AddrClass::Private),
            ("64:ff9b::a9fe:a9fe", AddrClass::LinkLocal),
            ("2002:7f00:1::", AddrClass::Loopback),
        ];
        for (addr, class) in cases {
            assert_eq!(classify(ip(addr)), class, "{addr}");
            assert!(!policy.is_allowed(ip(addr)), "{addr} must be refused");
        }
    }

    #[test]
    fn range_edges_are_public() {
        let policy = AddrPolicy::default();
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2001:db9::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(classify(ip(addr)), AddrClass::Public, "{addr}");
            assert!(policy.is_allowed(ip(addr)), "{addr} must be allowed");
        }
    }

    #[test]
    fn loopback_and_private_switches_open_only_their_class() {
        let loopback = AddrPolicy {
            allow_loopback: true,
            ..AddrPolicy::default()
        };
        assert!(loopback.is_allowed(ip("127.0.0.1")));
        assert!(loopback.is_allowed(ip("::1")));
        assert!(loopback.is_allowed(ip("::ffff:127.0.0.1")));
        assert!(!loopback.is_allowed(ip("10.0.0.1")));
        assert!(!loopback.is_allowed(ip("169.254.169.254")));
        assert!(!loopback.is_allowed(ip("0.0.0.0")));

        let private = AddrPolicy {
            allow_private: true,
            ..AddrPolicy::default()
        };
        assert!(private.is_allowed(ip("10.0.0.1")));
        assert!(private.is_allowed(ip("172.20.1.1")));
        assert!(private.is_allowed(ip("192.168.0.10")));
        assert!(private.is_allowed(ip("fd12::1")));
        assert!(!private.is_allowed(ip("127.0.0.1")));
        assert!(!private.is_allowed(ip("100.64.0.1")));
        assert!(!private.is_allowed(ip("169.254.169.254")));
        assert!(!private.is_allowed(ip("fe80::1")));
    }

    #[test]
    fn allow_list_opens_exactly_its_networks() {
        let policy: AddrPolicy = serde_json::from_str(
            r#"{"allow": ["100.64.1.0/24", "fd00:1::/32", "169.254.169.254/32"]}"#,
        )
        .expect("policy parses");
        assert!(policy.is_allowed(ip("100.64.1.77")));
        assert!(!policy.is_allowed(ip("100.64.2.1")));
        assert!(policy.is_allowed(ip("fd00:1::5")));
        assert!(!policy.is_allowed(ip("fd00:2::5")));
        assert!(policy.is_allowed(ip("169.254.169.254")));
        assert!(
            policy.is_allowed(ip("::ffff:100.64.1.1")),
            "mapped form of an allowed v4"
        );
        assert!(!policy.is_allowed(ip("127.0.0.1")));
    }

    #[test]
    fn config_rejects_unknown_fields_and_bad_networks() {
        assert!(serde_json::from_str::<AddrPolicy>(r#"{"allow_loopbak": true}"#).is_err());
        assert!(serde_json::from_str::<AddrPolicy>(r#"{"allow": ["10.0.0.0/33"]}"#).is_err());
        assert!(serde_json::from_str::<AddrPolicy>(r#"{"allow": ["not a net"]}"#).is_err());
        let empty: AddrPolicy = serde_json::from_str("{}").expect("defaults");
        assert_eq!(empty, AddrPolicy::default());
    }

    #[test]
    fn check_url_rejects_bad_syntax_with_bad_url() {
        let policy = AddrPolicy::default();
        for url in [
            "not a url",
            "example.com/hook",
            "ftp://example.com/hook",
            "file:///etc/passwd",
            "gopher://example.com/",
            "https://user:pw@example.com/hook",
            "https://user@example.com/hook",
            "unix:/var/run/x.sock",
            "http://",
        ] {
            let err = policy.check_url(url).expect_err(url);
            assert_eq!(err.code(), "bad_url", "{url}: {err}");
        }
    }

    #[test]
    fn check_url_refuses_literal_special_addresses_in_every_spelling() {
        let policy = AddrPolicy::default();
        for url in [
            "http://127.0.0.1:8080/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://10.0.0.1/",
            "http://0.0.0.0/",
            "http://localhost:9000/",
            "http://LOCALHOST./",
            "http://api.localhost/",
        ] {
            let err = policy.check_url(url).expect_err(url);
            assert_eq!(err.code(), "url_not_allowed", "{url}: {err}");
        }
    }

    #[test]
    fn check_url_accepts_public_urls_and_names() {
        let policy = AddrPolicy::default();
        for url in [
            "https://example.com/hook",
            "http://example.com:8080/a/b?c=d",
            "https://8.8.8.8/",
            "https://[2606:4700::1111]/x",
            "https://internal.example/", // names are checked when resolved, not here
        ] {
            let parsed = policy.check_url(url).expect(url);
            assert!(parsed.host().is_some());
        }
        let local = AddrPolicy::permissive();
        local
            .check_url("http://127.0.0.1:1/")
            .expect("loopback allowed");
        local
            .check_url("http://localhost:1/")
            .expect("localhost allowed");
    }

    #[tokio::test]
    async fn resolver_filters_refused_addresses() {
        let strict = AddrPolicy::default().resolver();
        let err = strict
            .resolve_allowed("localhost")
            .await
            .expect_err("loopback only");
        assert_eq!(err.code(), "url_not_allowed");
        let err = strict
            .resolve_allowed("127.0.0.1")
            .await
            .expect_err("literal");
        assert!(matches!(err, GuardError::NoAllowedAddress { .. }), "{err}");

        let local = AddrPolicy::permissive().resolver();
        let addrs = local
            .resolve_allowed("localhost")
            .await
            .expect("loopback allowed");
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
