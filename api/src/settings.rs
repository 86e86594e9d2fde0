//! The API's settings: its own section ([`ApiSettings`]: address, keys, body limit) and
//! everything an API process loads ([`ApiConfig`]: the engine's and the features' sections).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use jobmill::config::{Bounds, Config, CoreSettings, Env, Secret, Section, Setting};
use jobmill_data::DataSettings;
use jobmill_schedules::ScheduleSettings;
use jobmill_webhooks::WebhookSettings;

use crate::server::HttpLimits;

/// `JOBMILL_API_ADDR`.
pub const API_ADDR: Setting = Setting {
    env: "JOBMILL_API_ADDR",
    default: "127.0.0.1:8080",
    bounds: Bounds::Text,
    doc: "API listen address (loopback by default: exposing it is a deliberate act)",
};
/// `JOBMILL_API_KEYS`.
pub const API_KEYS: Setting = Setting {
    env: "JOBMILL_API_KEYS",
    default: "",
    bounds: Bounds::Text,
    doc: "comma-separated name:secret:role, role = submitter|viewer|operator (required by the API)",
};
/// `JOBMILL_MAX_BODY_BYTES`.
pub const MAX_BODY_BYTES: Setting = Setting {
    env: "JOBMILL_MAX_BODY_BYTES",
    default: "1048576",
    bounds: Bounds::Count(1024, 64 * 1024 * 1024),
    doc: "largest HTTP request body",
};

/// `JOBMILL_METRICS_TOKEN`.
pub const METRICS_TOKEN: Setting = Setting {
    env: "JOBMILL_METRICS_TOKEN",
    default: "",
    bounds: Bounds::Text,
    doc: "bearer token Prometheus may send to GET /metrics instead of a viewer or operator key (16+ characters; none when empty)",
};

/// `JOBMILL_UI_SECURE_COOKIE`.
pub const UI_SECURE_COOKIE: Setting = Setting {
    env: "JOBMILL_UI_SECURE_COOKIE",
    default: "auto",
    bounds: Bounds::Text,
    doc: "Secure flag of the dashboard's session cookie: auto (when the request came over HTTPS, X-Forwarded-Proto behind a proxy), always or never",
};
/// `JOBMILL_UI_SESSION_SECRET`.
pub const UI_SESSION_SECRET: Setting = Setting {
    env: "JOBMILL_UI_SESSION_SECRET",
    default: "",
    bounds: Bounds::Text,
    doc: "key that signs the dashboard's session cookies (32+ characters; give every API replica the same one). Empty: a random one per process, so sessions end when it restarts",
};
/// `JOBMILL_UI_SESSION_TTL`.
pub const UI_SESSION_TTL: Setting = Setting {
    env: "JOBMILL_UI_SESSION_TTL",
    default: "12h",
    bounds: Bounds::Duration(Duration::from_secs(60), Duration::from_secs(30 * 86_400)),
    doc: "how long a dashboard sign-in lasts",
};

/// When the session cookie carries `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureCookie {
    /// When the request came over HTTPS (`X-Forwarded-Proto: https` behind a proxy).
    Auto,
    /// Always.
    Always,
    /// Never (plain-HTTP development setups).
    Never,
}

/// The dashboard's settings.
#[derive(Debug, Clone)]
pub struct UiSettings {
    /// When the session cookie is `Secure`.
    pub secure_cookie: SecureCookie,
    /// Signing key of session cookies; `None` makes a random one per process.
    pub session_secret: Option<Secret>,
    /// Lifetime of a session.
    pub session_ttl: Duration,
}

impl Section for UiSettings {
    const SETTINGS: &'static [Setting] = &[UI_SECURE_COOKIE, UI_SESSION_SECRET, UI_SESSION_TTL];

    fn read(env: &Env) -> Self {
        let secure_cookie = env
            .parse(&UI_SECURE_COOKIE, |v| match v.trim() {
                "auto" => Ok(SecureCookie::Auto),
                "always" => Ok(SecureCookie::Always),
                "never" => Ok(SecureCookie::Never),
                other => Err(format!("'{other}' is not auto, always or never")),
            })
            .unwrap_or(SecureCookie::Auto);
        let session_secret = env
            .parse(&UI_SESSION_SECRET, |v| match v.trim() {
                "" => Ok(None),
                t if t.len() < 32 => Err("must be 32 or more characters".to_string()),
                t => Ok(Some(Secret::new(t))),
            })
            .flatten();
        UiSettings {
            secure_cookie,
            session_secret,
            session_ttl: env.duration(&UI_SESSION_TTL),
        }
    }
}

impl Default for UiSettings {
    fn default() -> Self {
        UiSettings::read(&Env::new(|_| None))
    }
}

/// What an API key may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sees and acts on its own jobs only.
    Submitter,
    /// Reads everything an operator may (every job, workers, queues, audit, metrics) and
    /// changes nothing but its own webhook endpoints and signing secret.
    Viewer,
    /// Sees and acts on every job, worker and queue.
    Operator,
}

/// One configured API key. The name is the tenant that owns the jobs it submits.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Tenant name.
    pub name: String,
    /// Bearer secret.
    pub secret: Secret,
    /// Permissions.
    pub role: Role,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The API's own settings.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Listen address.
    pub addr: SocketAddr,
    /// Accepted keys.
    pub keys: Vec<ApiKey>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Scrape token of `GET /metrics`, if any.
    pub metrics_token: Option<Secret>,
}

impl Section for ApiSettings {
    const SETTINGS: &'static [Setting] = &[API_ADDR, API_KEYS, MAX_BODY_BYTES, METRICS_TOKEN];

    fn read(env: &Env) -> Self {
        let addr = env
            .parse(&API_ADDR, |v| {
                v.parse::<SocketAddr>()
                    .map_err(|_| format!("'{v}' is not an address like 127.0.0.1:8080"))
            })
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let keys = env.parse(&API_KEYS, parse_api_keys).unwrap_or_default();
        let metrics_token = env
            .parse(&METRICS_TOKEN, |v| match v.trim() {
                "" => Ok(None),
                t if t.len() < 16 || t.chars().any(char::is_whitespace) => {
                    Err("must be 16 or more characters without spaces".to_string())
                }
                t => Ok(Some(Secret::new(t))),
            })
            .flatten();
        ApiSettings {
            addr,
            keys,
            max_body_bytes: env.count(&MAX_BODY_BYTES),
            metrics_token,
        }
    }
}

/// Everything an API process loads.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The engine's settings.
    pub core: CoreSettings,
    /// The API's own.
    pub api: ApiSettings,
    /// The HTTP server's timeouts and connection limit.
    pub http: HttpLimits,
    /// The webhooks feature's.
    pub webhooks: WebhookSettings,
    /// The data feature's.
    pub data: DataSettings,
    /// The schedules feature's.
    pub schedules: ScheduleSettings,
    /// The dashboard's.
    pub ui: UiSettings,
}

impl Config for ApiConfig {
    const TABLES: &'static [&'static [Setting]] = &[
        CoreSettings::SETTINGS,
        ApiSettings::SETTINGS,
        HttpLimits::SETTINGS,
        WebhookSettings::SETTINGS,
        DataSettings::SETTINGS,
        ScheduleSettings::SETTINGS,
        UiSettings::SETTINGS,
    ];

    fn read_sections(env: &Env) -> Self {
        let c = ApiConfig {
            core: CoreSettings::read(env),
            api: ApiSettings::read(env),
            http: HttpLimits::read(env),
            webhooks: WebhookSettings::read(env),
            data: DataSettings::read(env),
            schedules: ScheduleSettings::read(env),
            ui: UiSettings::read(env),
        };
        if c.api.keys.is_empty() && !env.is_set(&API_KEYS) {
            env.problem(
                &API_KEYS,
                "the API needs at least one key, e.g. JOBMILL_API_KEYS=ops:<secret of 16+ chars>:operator",
            );
        }
        // A rule that ties two sections together.
        if c.core.max_args_bytes > c.api.max_body_bytes {
            env.problem(
                &jobmill::config::MAX_ARGS_BYTES,
                "must not exceed JOBMILL_MAX_BODY_BYTES",
            );
        }
        c
    }
}

fn parse_api_keys(raw: &str) -> std::result::Result<Vec<ApiKey>, String> {
    let mut keys: Vec<ApiKey> = Vec::new();
    for (i, entry) in raw
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let n = i + 1;
        let parts: Vec<&str> = entry.split(':').collect();
        let [name, secret, role] = parts[..] else {
            return Err(format!("entry {n} must be name:secret:role"));
        };
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "entry {n}: name must be 1-64 letters, digits, '_' or '-'"
            ));
        }
        if secret.len() < 16 || secret.len() > 256 || secret.chars().any(|c| c.is_whitespace()) {
            return Err(format!(
                "entry {n} ({name}): secret must be 16-256 characters without spaces"
            ));
        }
        let role = match role {
            "submitter" => Role::Submitter,
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            other => {
                return Err(format!(
                    "entry {n} ({name}): role '{other}' is not submitter, viewer or operator"
                ))
            }
        };
        if keys.iter().any(|k| k.name == name) {
            return Err(format!("name '{name}' is used twice"));
        }
        if keys.iter().any(|k| k.secret.expose() == secret) {
            return Err(format!("entry {n} ({name}) reuses another key's secret"));
        }
        keys.push(ApiKey {
            name: name.to_string(),
            secret: Secret::new(secret),
            role,
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> jobmill::Result<ApiConfig> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ApiConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn api_requires_a_key() {
        let err = load(&[]).unwrap_err().to_string();
        assert!(err.contains("JOBMILL_API_KEYS"), "{err}");
    }

    #[test]
    fn every_broken_setting_is_named() {
        let err = load(&[
            ("JOBMILL_API_ADDR", "nowhere"),
            ("JOBMILL_RETENTION", "forever"),
            ("JOBMILL_KEY_PREFIX", "a{b}"),
            ("JOBMILL_REDIS_URL", "http://x"),
            ("JOBMILL_API_KEYS", "a:short:operator"),
        ])
        .unwrap_err()
        .to_string();
        for name in [
            "JOBMILL_API_ADDR",
            "JOBMILL_RETENTION",
            "JOBMILL_KEY_PREFIX",
            "JOBMILL_REDIS_URL",
            "JOBMILL_API_KEYS",
        ] {
            assert!(err.contains(name), "{name} missing from: {err}");
        }
    }

    #[test]
    fn keys_parse_and_secrets_stay_secret() {
        let s = load(&[(
            "JOBMILL_API_KEYS",
            "alice:0123456789abcdef:submitter, ops:fedcba9876543210:operator",
        )])
        .unwrap();
        assert_eq!(s.api.keys.len(), 2);
        assert_eq!(s.api.keys[1].role, Role::Operator);
        let v = load(&[("JOBMILL_API_KEYS", "eyes:0123456789abcdef:viewer")]).unwrap();
        assert_eq!(v.api.keys[0].role, Role::Viewer);
        let err = load(&[("JOBMILL_API_KEYS", "x:0123456789abcdef:admin")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("viewer"), "{err}");
        assert!(
            !format!("{s:?}").contains("0123456789abcdef"),
            "secrets leak into Debug"
        );
    }

    #[test]
    fn dashboard_settings_parse_and_are_checked() {
        let keys = ("JOBMILL_API_KEYS", "ops:fedcba9876543210:operator");
        let d = load(&[keys]).unwrap();
        assert_eq!(d.ui.secure_cookie, SecureCookie::Auto);
        assert!(d.ui.session_secret.is_none());
        assert_eq!(d.ui.session_ttl, Duration::from_secs(12 * 3600));
        let c = load(&[
            keys,
            ("JOBMILL_UI_SECURE_COOKIE", "always"),
            ("JOBMILL_UI_SESSION_SECRET", &"s".repeat(32)),
            ("JOBMILL_UI_SESSION_TTL", "30m"),
        ])
        .unwrap();
        assert_eq!(c.ui.secure_cookie, SecureCookie::Always);
        assert!(c.ui.session_secret.is_some());
        assert!(
            !format!("{c:?}").contains(&"s".repeat(32)),
            "the secret leaks into Debug"
        );
        let err = load(&[
            keys,
            ("JOBMILL_UI_SECURE_COOKIE", "sometimes"),
            ("JOBMILL_UI_SESSION_SECRET", "short"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("JOBMILL_UI_SECURE_COOKIE"), "{err}");
        assert!(err.contains("JOBMILL_UI_SESSION_SECRET"), "{err}");
    }

    #[test]
    fn tied_settings_are_checked_together() {
        let err = load(&[
            ("JOBMILL_API_KEYS", "ops:fedcba9876543210:operator"),
            ("JOBMILL_MAX_ARGS_BYTES", "4096"),
            ("JOBMILL_MAX_BODY_BYTES", "2048"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("JOBMILL_MAX_ARGS_BYTES"), "{err}");
    }
}
