//! `http://` and `https://` URLs as the agent's and collector's own HTTP
//! clients need them: the parts for DNS, TLS server names and the request line.

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    https: bool,
    /// Host without IPv6 brackets, for DNS and the TLS server name.
    host: String,
    port: u16,
    /// `host[:port]` as written, for the `Host` header.
    authority: String,
    path_and_query: String,
}

impl HttpTarget {
    /// Parses `url`; the error says why it cannot be fetched.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => return Err(format!("scheme {other:?} is not http or https")),
            None => return Err("no scheme (http:// or https://)".to_string()),
        };
        let authority = uri.authority().ok_or("no host")?;
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not supported".to_string());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err("no host".to_string());
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string());
        Ok(Self {
            https,
            host,
            port,
            authority: authority.as_str().to_string(),
            path_and_query,
        })
    }

    /// The same server with `path_and_query` appended to this URL's path (its
    /// query dropped), e.g. `/api/v1/query?...` under a base URL's prefix.
    pub fn join(&self, path_and_query: &str) -> Self {
        let base = self.path_and_query.split('?').next().unwrap_or("");
        let base = base.trim_end_matches('/');
        let rest = path_and_query.trim_start_matches('/');
        Self {
            path_and_query: format!("{base}/{rest}"),
            ..self.clone()
        }
    }

    /// Whether this is an `https://` URL.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The host, without IPv6 brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host[:port]` as written, for the `Host` header.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The path and query, at least `/`.
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// The URL, rebuilt.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority, self.path_and_query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parts_and_defaults() {
        let t = HttpTarget::parse("https://[::1]/hub/health?x=1").expect("valid");
        assert!(t.is_https());
        assert_eq!((t.host(), t.port(), t.authority()), ("::1", 443, "[::1]"));
        assert_eq!(t.path_and_query(), "/hub/health?x=1");
        let t = HttpTarget::parse("http://example.org:8080").expect("valid");
        assert_eq!((t.port(), t.path_and_query()), (8080, "/"));
    }

    #[test]
    fn join_keeps_the_base_prefix_and_drops_its_query() {
        let t = HttpTarget::parse("http://p.example/prom/?a=b").expect("valid");
        assert_eq!(
            t.join("/api/v1/query?q=up").url(),
            "http://p.example/prom/api/v1/query?q=up"
        );
    }

    #[test]
    fn refuses_what_cannot_be_fetched() {
        for bad in ["ftp://x/", "//x/", "http://user:pw@x/", "not a url"] {
            assert!(HttpTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
