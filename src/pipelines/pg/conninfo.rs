//! libpq connection strings, parsed as libpq parses them (`conninfo_parse` and
//! `conninfo_uri_parse` in `fe-connect.c`), so that a password in one can be given to
//! a PostgreSQL program through its environment instead of its command line, where
//! every local user can read it, and shown nowhere.
//!
//! Two forms: `host=db user=app password='x y'` (values quoted with `'`, `\` escaping
//! the next character) and `postgresql://user:password@host:port,host2/dbname?key=value`
//! (percent-encoded). Anything else is a database name.

use std::ffi::OsString;
use std::ops::Range;

use crate::error::{Error, Result};

/// A connection string and what libpq reads in it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// As the user wrote it; never shown (it may hold a password).
    text: String,
    /// Byte ranges of `text` that hold (or may hold) a password: `***` in messages.
    hidden: Vec<Range<usize>>,
    /// Every keyword but `password`, in order (libpq takes the last of a repeated one).
    params: Vec<(String, String)>,
    /// The last password given, if any.
    password: Option<String>,
}

const URI_PREFIXES: [&str; 2] = ["postgresql://", "postgres://"];

/// The keywords libpq knows (PostgreSQL 17), `password` aside.
const KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "passfile",
    "require_auth",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "requiressl",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslkeylogfile",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
    "min_protocol_version",
    "max_protocol_version",
];

fn invalid(reason: impl std::fmt::Display) -> Error {
    // The string itself is never quoted: a mistake in it may be inside a password.
    Error::InvalidInput(format!("the PostgreSQL connection string is not valid: {reason}"))
}

impl ConnInfo {
    /// Parses a connection string, URI, or bare database name.
    pub fn parse(text: &str) -> Result<Self> {
        let mut conninfo = Self { text: text.to_string(), ..Self::default() };
        if let Some(prefix) = URI_PREFIXES.iter().find(|prefix| text.starts_with(*prefix)) {
            conninfo.parse_uri(prefix.len())?;
        } else if text.contains('=') {
            conninfo.parse_keywords()?;
        } else if !text.is_empty() {
            conninfo.params.push(("dbname".into(), text.to_string()));
        }
        conninfo.refuse_what_libpq_would_read_differently()?;
        Ok(conninfo)
    }

    /// libpq reads a `dbname` that is itself a connection string as one (and its
    /// password with it), and refuses keywords it does not know: rather than guess at
    /// either, such strings are refused, so a password can never slip past the parser.
    fn refuse_what_libpq_would_read_differently(&self) -> Result<()> {
        for (name, value) in &self.params {
            if name == "sslpassword" {
                return Err(invalid(
                    "sslpassword would show in the process list and the audit trail; give the client key \
                     unencrypted in a file of mode 0600, or use a service file (PGSERVICEFILE)",
                ));
            }
            if !KEYWORDS.contains(&name.as_str()) {
                return Err(invalid(format!("{name:?} is not a keyword libpq knows (keywords are lower case)")));
            }
            let nested = value.contains('=') || URI_PREFIXES.iter().any(|prefix| value.starts_with(prefix));
            if name == "dbname" && nested && !self.text.starts_with(value.as_str()) {
                return Err(invalid("the database name is itself a connection string; give its keywords directly"));
            }
        }
        Ok(())
    }

    /// The same connection with another database name, in key=value form (the password
    /// kept, still apart from the text).
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut params: Vec<(String, String)> =
            self.params.iter().filter(|(name, _)| name != "dbname").cloned().collect();
        params.push(("dbname".into(), dbname.to_string()));
        let text = params.iter().map(|(name, value)| format!("{name}={}", quote(value))).collect::<Vec<_>>().join(" ");
        Self { text, hidden: Vec::new(), params, password: self.password.clone() }
    }

    /// Whether the string names this keyword (`passfile`, say).
    pub fn has(&self, keyword: &str) -> bool {
        self.params.iter().any(|(name, _)| name == keyword)
    }

    /// The password, if the string holds one.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The value of a keyword (the last one given), except `password`.
    pub fn get(&self, keyword: &str) -> Option<&str> {
        self.params.iter().rev().find(|(name, _)| name == keyword).map(|(_, value)| value.as_str())
    }

    /// What to pass as `--dbname`: the string unchanged when it holds no password,
    /// else its keywords without the password, in key=value form.
    pub fn argument(&self) -> OsString {
        if self.hidden.is_empty() {
            return OsString::from(&self.text);
        }
        let words: Vec<String> = self.params.iter().map(|(name, value)| format!("{name}={}", quote(value))).collect();
        OsString::from(words.join(" "))
    }

    fn store(&mut self, keyword: &str, value: String, span: Range<usize>) {
        if keyword == "password" {
            self.password = Some(value);
            self.hidden.push(span);
        } else {
            self.params.push((keyword.to_string(), value));
        }
    }

    /// `keyword = value` pairs separated by white space.
    fn parse_keywords(&mut self) -> Result<()> {
        let text = self.text.clone();
        let bytes = text.as_bytes();
        let mut at = 0;
        let mut number = 0;
        loop {
            at = skip_spaces(bytes, at);
            if at == bytes.len() {
                return Ok(());
            }
            number += 1;
            let name_start = at;
            while at < bytes.len() && bytes[at] != b'=' && !is_space(bytes[at]) {
                at += 1;
            }
            let name = &text[name_start..at];
            at = skip_spaces(bytes, at);
            if bytes.get(at) != Some(&b'=') {
                return Err(invalid(format!("keyword number {number} has no \"=\" after it")));
            }
            at = skip_spaces(bytes, at + 1);
            let value_start = at;
            let (value, end) = keyword_value(bytes, at).ok_or_else(|| invalid("a quoted value is not terminated"))?;
            at = end;
            self.store(name, value, value_start..end);
        }
    }

    /// `postgresql://[user[:password]@][host[:port][,...]][/dbname][?key=value&...]`.
    fn parse_uri(&mut self, prefix: usize) -> Result<()> {
        let text = self.text.clone();
        let bytes = text.as_bytes();
        let mut at = prefix;
        self.hide_user_information(at);
        // libpq looks for the user designator up to the first '@' or '/'.
        let designator = bytes[at..].iter().position(|&b| b == b'@' || b == b'/').map(|offset| at + offset);
        if let Some(end) = designator.filter(|&end| bytes[end] == b'@') {
            let user_end = bytes[at..end].iter().position(|&b| b == b':').map_or(end, |offset| at + offset);
            if user_end > at {
                self.store("user", percent_decode(&bytes[at..user_end])?, at..user_end);
            }
            if user_end < end && user_end + 1 < end {
                self.password = Some(percent_decode(&bytes[user_end + 1..end])?);
            }
            at = end + 1;
        }
        let (hosts, ports, end) = uri_hosts(bytes, at)?;
        if !hosts.is_empty() {
            self.store("host", percent_decode(hosts.as_bytes())?, 0..0);
        }
        if !ports.is_empty() {
            self.store("port", percent_decode(ports.as_bytes())?, 0..0);
        }
        at = end;
        if bytes.get(at) == Some(&b'/') {
            let start = at + 1;
            at = bytes[start..].iter().position(|&b| b == b'?').map_or(bytes.len(), |offset| start + offset);
            if at > start {
                self.store("dbname", percent_decode(&bytes[start..at])?, start..at);
            }
        }
        if bytes.get(at) == Some(&b'?') {
            self.parse_uri_parameters(at + 1)?;
        }
        Ok(())
    }

    /// Hides, for display, everything from the first ':' to the last '@' before the
    /// query: the password as libpq reads it, and also what the user may have meant as
    /// one when a '/' or '@' in it makes libpq read it otherwise.
    fn hide_user_information(&mut self, start: usize) {
        let before_query = self.text[start..].split('?').next().unwrap_or_default();
        let Some(at_sign) = before_query.rfind('@') else { return };
        if let Some(colon) = before_query[..at_sign].find(':') {
            if colon + 1 < at_sign {
                self.hidden.push(start + colon + 1..start + at_sign);
            }
        }
    }

    fn parse_uri_parameters(&mut self, mut at: usize) -> Result<()> {
        let text = self.text.clone();
        let parameters: Vec<&str> = text[at..].split('&').collect();
        for (number, parameter) in parameters.iter().enumerate() {
            let start = at;
            at += parameter.len() + 1;
            if parameter.is_empty() && number + 1 == parameters.len() {
                break; // nothing, or nothing after a last '&'
            }
            let Some((name, value)) = parameter.split_once('=') else {
                return Err(invalid("a URI query parameter has no \"=\""));
            };
            if value.contains('=') {
                return Err(invalid("a URI query parameter has more than one \"=\""));
            }
            let name = percent_decode(name.as_bytes())?;
            let value_span = start + parameter.len() - value.len()..start + parameter.len();
            let value = percent_decode(value.as_bytes())?;
            if name.is_empty() || name.bytes().any(|b| is_space(b) || b == b'\'' || b == b'\\') {
                return Err(invalid("a URI query parameter has an invalid name"));
            }
            // libpq's one translation of a query parameter.
            if name == "ssl" && value == "true" {
                self.store("sslmode", "require".into(), value_span);
            } else {
                self.store(&name, value, value_span);
            }
        }
        Ok(())
    }
}

/// The string for messages: the password, wherever it is, replaced by `***`.
impl std::fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = 0;
        for span in &self.hidden {
            f.write_str(&self.text[shown..span.start])?;
            f.write_str("***")?;
            shown = span.end;
        }
        f.write_str(&self.text[shown..])
    }
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnInfo({self})")
    }
}

/// C's `isspace` in the C locale, which libpq uses.
fn is_space(byte: u8) -> bool {
    byte.is_ascii_whitespace() || byte == 0x0b
}

fn skip_spaces(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() && is_space(bytes[at]) {
        at += 1;
    }
    at
}

/// A value of the key=value form starting at `at`, and where it ends; `None` for an
/// unterminated quoted value. A backslash takes the next byte literally, quoted or not.
fn keyword_value(bytes: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut value = Vec::new();
    let quoted = bytes.get(at) == Some(&b'\'');
    if quoted {
        at += 1;
    }
    loop {
        match bytes.get(at) {
            None if quoted => return None,
            None => break,
            Some(b'\'') if quoted => {
                at += 1;
                break;
            }
            Some(&byte) if !quoted && is_space(byte) => break,
            Some(b'\\') => {
                if let Some(&next) = bytes.get(at + 1) {
                    value.push(next);
                    at += 1;
                }
                at += 1;
            }
            Some(&byte) => {
                value.push(byte);
                at += 1;
            }
        }
    }
    // The input was a &str and only whole bytes were copied around ASCII delimiters.
    Some((String::from_utf8_lossy(&value).into_owned(), at))
}

/// The host list of a URI from `at`: hosts and ports joined by commas as libpq joins
/// them (a host without a port leaves an empty place), and where the list ends.
fn uri_hosts(bytes: &[u8], mut at: usize) -> Result<(String, String, usize)> {
    let (mut hosts, mut ports) = (Vec::new(), Vec::new());
    let stops = |b: u8| matches!(b, b':' | b'/' | b'?' | b',');
    loop {
        let host;
        if bytes.get(at) == Some(&b'[') {
            let start = at + 1;
            let close = bytes[start..].iter().position(|&b| b == b']').map(|offset| start + offset);
            let close = close.ok_or_else(|| invalid("an IPv6 host address has no closing \"]\""))?;
            if close == start {
                return Err(invalid("an IPv6 host address is empty"));
            }
            host = &bytes[start..close];
            at = close + 1;
            if bytes.get(at).is_some_and(|&b| !stops(b)) {
                return Err(invalid("an IPv6 host address is followed by something other than \":\" or \"/\""));
            }
        } else {
            let start = at;
            while bytes.get(at).is_some_and(|&b| !stops(b)) {
                at += 1;
            }
            host = &bytes[start..at];
        }
        hosts.push(String::from_utf8_lossy(host).into_owned());
        let mut port = &bytes[0..0];
        if bytes.get(at) == Some(&b':') {
            let start = at + 1;
            at = start;
            while bytes.get(at).is_some_and(|&b| !matches!(b, b'/' | b'?' | b',')) {
                at += 1;
            }
            port = &bytes[start..at];
        }
        ports.push(String::from_utf8_lossy(port).into_owned());
        if bytes.get(at) != Some(&b',') {
            return Ok((hosts.join(","), ports.join(","), at));
        }
        at += 1;
    }
}

/// Decodes `%XX` escapes; `+` stays `+`, as in libpq.
fn percent_decode(bytes: &[u8]) -> Result<String> {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'%' {
            decoded.push(bytes[at]);
            at += 1;
            continue;
        }
        let digits = bytes.get(at + 1..at + 3).and_then(|pair| std::str::from_utf8(pair).ok());
        let value = digits.and_then(|digits| u8::from_str_radix(digits, 16).ok());
        match value {
            Some(0) => return Err(invalid("it holds the forbidden escape %00")),
            Some(value) => decoded.push(value),
            None => return Err(invalid("it holds a \"%\" that is not followed by two hexadecimal digits")),
        }
        at += 3;
    }
    String::from_utf8(decoded).map_err(|_| invalid("a percent-encoded value is not UTF-8"))
}

/// A value quoted for the key=value form.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parsed(text: &str) -> ConnInfo {
        ConnInfo::parse(text).unwrap()
    }

    fn params(conninfo: &ConnInfo) -> Vec<(&str, &str)> {
        conninfo.params.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect()
    }

    #[test]
    fn strings_libpq_would_read_differently_are_refused() {
        for text in [
            "dbname='host=db password=X dbname=clinic'",
            "dbname=postgresql://app:X@db/clinic",
            "host=db PASSWORD=X dbname=clinic",
            "host=db passwd=X",
            "host=db sslpassword=X dbname=clinic",
            "postgresql://app@db/clinic?sslpassword=X",
        ] {
            let error = ConnInfo::parse(text).unwrap_err().to_string();
            assert!(!error.contains('X'), "{text}: {error}");
        }
        assert!(ConnInfo::parse("clinic").is_ok());
        assert!(ConnInfo::parse("postgresql://app:X@db/clinic").is_ok());
    }

    #[test]
    fn keyword_form_follows_libpq_quoting() {
        let conninfo = parsed(r"host=db  user = app password='x y\'z\\' dbname=clinic sslmode=require");
        assert_eq!(conninfo.password(), Some(r"x y'z\"));
        assert_eq!(params(&conninfo), [("host", "db"), ("user", "app"), ("dbname", "clinic"), ("sslmode", "require")]);
        assert_eq!(conninfo.to_string(), "host=db  user = app password=*** dbname=clinic sslmode=require");
        assert_eq!(conninfo.argument(), "host='db' user='app' dbname='clinic' sslmode='require'");
        let unquoted = parsed(r"password=a\ b host=h");
        assert_eq!(unquoted.password(), Some("a b"));
        assert_eq!(unquoted.to_string(), "password=*** host=h");
        let empty = parsed("password='' dbname=x");
        assert_eq!(empty.password(), Some(""));
        assert_eq!(empty.to_string(), "password=*** dbname=x");
    }

    #[test]
    fn uri_form_follows_libpq() {
        let conninfo =
            parsed("postgresql://app:p%40ss:w@db.internal:5433/clinic?sslmode=require&application_name=x%20y");
        assert_eq!(conninfo.password(), Some("p@ss:w"));
        assert_eq!(
            params(&conninfo),
            [
                ("user", "app"),
                ("host", "db.internal"),
                ("port", "5433"),
                ("dbname", "clinic"),
                ("sslmode", "require"),
                ("application_name", "x y")
            ]
        );
        assert_eq!(
            conninfo.to_string(),
            "postgresql://app:***@db.internal:5433/clinic?sslmode=require&application_name=x%20y"
        );
        assert_eq!(
            conninfo.argument(),
            "user='app' host='db.internal' port='5433' dbname='clinic' sslmode='require' application_name='x y'"
        );
        let hosts = parsed("postgres://h1,[::1]:5433,h3:7/db?password=secret&ssl=true");
        assert_eq!(
            params(&hosts),
            [("host", "h1,::1,h3"), ("port", ",5433,7"), ("dbname", "db"), ("sslmode", "require")]
        );
        assert_eq!(hosts.password(), Some("secret"));
        assert_eq!(hosts.to_string(), "postgres://h1,[::1]:5433,h3:7/db?password=***&ssl=true");
        let socket = parsed("postgresql:///clinic?host=%2Fvar%2Frun%2Fpostgresql");
        assert_eq!(params(&socket), [("dbname", "clinic"), ("host", "/var/run/postgresql")]);
        assert_eq!(socket.argument(), "postgresql:///clinic?host=%2Fvar%2Frun%2Fpostgresql");
        let no_password = parsed("postgresql://app@db/clinic");
        assert_eq!((no_password.password(), no_password.get("user")), (None, Some("app")));
        let empty_password = parsed("postgresql://app:@db");
        assert_eq!(empty_password.password(), None);
    }

    #[test]
    fn a_bare_name_is_a_database() {
        assert_eq!(params(&parsed("clinic")), [("dbname", "clinic")]);
        assert_eq!(parsed("clinic").argument(), "clinic");
    }

    #[test]
    fn errors_never_quote_the_string() {
        for bad in [
            "host=db password='s3cr3t",
            "host=db s3cr3t",
            "postgresql://u:s3cr3t@h/db?x",
            "postgresql://u:s3cr3t@h/db?a=b&&c=d",
            "postgresql://u:s3cr3t@h/db?a=b=c",
            "postgresql://u:s3cr3t%zz@h/db",
            "postgresql://u:s3cr3t%00@h/db",
            "postgresql://u:s3cr3t@[::1/db",
            "postgresql://u:s3cr3t@[]/db",
            "postgresql://u:s3cr3t@[::1]x/db",
        ] {
            let error = ConnInfo::parse(bad).expect_err(bad).to_string();
            assert!(!error.contains("s3cr3t"), "{bad}: {error}");
        }
    }

    #[test]
    fn user_information_libpq_does_not_see_is_hidden_too() {
        // A '/' in the password ends libpq's search for '@': to libpq this is host
        // "app", port "pa" and database "ss@db/clinic", but it is shown hidden.
        let conninfo = parsed("postgresql://app:pa/ss@db/clinic");
        assert_eq!(conninfo.password(), None);
        assert_eq!(conninfo.to_string(), "postgresql://app:***@db/clinic");
        assert_eq!(params(&conninfo), [("host", "app"), ("port", "pa"), ("dbname", "ss@db/clinic")]);
        // An '@' in the password: libpq reads password "p" and host "ss@h".
        let conninfo = parsed("postgresql://u:p@ss@h/db");
        assert_eq!((conninfo.password(), conninfo.get("host")), (Some("p"), Some("ss@h")));
        assert_eq!(conninfo.to_string(), "postgresql://u:***@h/db");
    }

    proptest! {
        /// Whatever the password, it is shown as `***`, and the argument, parsed
        /// again, has the same keywords and no password.
        #[test]
        fn passwords_never_show(password in "[ -~]{1,20}") {
            let quoted = quote(&password);
            let encoded: String = password.bytes().map(|b| format!("%{b:02X}")).collect();
            for (text, shown) in [
                (format!("user=u password={quoted} dbname=d"), "user=u password=*** dbname=d"),
                (format!("postgresql://u:{encoded}@h/d"), "postgresql://u:***@h/d"),
                (format!("postgresql://u@h/d?password={encoded}"), "postgresql://u@h/d?password=***"),
            ] {
                let conninfo = ConnInfo::parse(&text).unwrap();
                prop_assert_eq!(conninfo.password(), Some(password.as_str()));
                prop_assert_eq!(conninfo.to_string(), shown);
                let argument = conninfo.argument().into_string().unwrap();
                let again = ConnInfo::parse(&argument).unwrap();
                prop_assert_eq!(again.password(), None);
                prop_assert_eq!(&again.params, &conninfo.params);
            }
        }
    }
}
