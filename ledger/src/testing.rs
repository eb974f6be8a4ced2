//! Helpers for tests that need outside services (not part of the stable API).

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The variable naming the PostgreSQL server tests use.
pub const POSTGRES_URL_VAR: &str = "CLOACINA_TEST_POSTGRES_URL";
/// Set to `1` (as `.ci/run` does) to make PostgreSQL tests fail instead of skipping.
pub const REQUIRE_POSTGRES_VAR: &str = "CLOACINA_REQUIRE_POSTGRES";

/// The PostgreSQL URL tests should use, or `None` (with a note on stderr) to skip: when
/// [`POSTGRES_URL_VAR`] is unset or empty, or its server does not accept a TCP connection
/// within 2 s.
///
/// # Panics
///
/// Instead of skipping, when [`REQUIRE_POSTGRES_VAR`] is `1`: a run that must test
/// PostgreSQL fails loudly rather than passing without it.
pub fn postgres_url() -> Option<String> {
    let required = std::env::var(REQUIRE_POSTGRES_VAR).is_ok_and(|v| v.trim() == "1");
    let skip = |why: String| -> Option<String> {
        if required {
            panic!("{REQUIRE_POSTGRES_VAR}=1 but {why}");
        }
        eprintln!(
            "skipped: {why} (e.g. {POSTGRES_URL_VAR}=postgres://postgres@127.0.0.1:5432/test)"
        );
        None
    };
    let url = match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => return skip(format!("{POSTGRES_URL_VAR} is not set")),
    };
    match host_port(&url) {
        // A socket directory or some other form we do not parse: let the test try it.
        None => Some(url),
        Some(addr) => {
            let reachable = addr.to_socket_addrs().is_ok_and(|mut addrs| {
                addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
            });
            if reachable {
                Some(url)
            } else {
                skip(format!(
                    "the PostgreSQL server of {POSTGRES_URL_VAR} ({addr}) is unreachable"
                ))
            }
        }
    }
}

/// `host:port` of a `postgres://` URL (port 5432 if not given), if it names a TCP host.
fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() || host_port.contains(',') {
        return None;
    }
    if host_port.starts_with('[') {
        // [v6] or [v6]:port
        return Some(if host_port.ends_with(']') {
            format!("{host_port}:5432")
        } else {
            host_port.to_owned()
        });
    }
    Some(if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    })
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn host_and_port_are_found() {
        assert_eq!(
            host_port("postgres://u:p@db.local:6543/x?schema=a").as_deref(),
            Some("db.local:6543")
        );
        assert_eq!(
            host_port("postgres://127.0.0.1/test").as_deref(),
            Some("127.0.0.1:5432")
        );
        assert_eq!(host_port("postgres:///test?host=/run/pg"), None);
    }
}
