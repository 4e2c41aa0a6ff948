//! GETs to the agent's endpoints through ureq, a maintained blocking HTTP client: every status
//! is an answer here (the tests check refusals too), and bodies come as sent (built without
//! its gzip feature, ureq neither asks for compression nor undoes it).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Bodies read at most (a `/metrics` of many pods is a few MiB).
const MAX_BODY: u64 = 1 << 30;

/// `GET path`; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let r = http_get_with(addr, path, &[])?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// What [`http_get_with`] read.
#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case, values as sent.
    pub headers: Vec<(String, String)>,
    /// As sent (still compressed if it was).
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with the request headers given.
pub fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    let url = format!("http://{addr}{path}");
    let failed = |e: ureq::Error| io::Error::other(format!("GET {url}: {e}"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    let mut request = agent.get(&url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().map_err(failed)?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_ascii_lowercase(), value)
        })
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .map_err(failed)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}
