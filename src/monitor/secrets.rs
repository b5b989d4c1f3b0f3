//! Keeping secrets out of messages: passwords in URLs.
//!
//! Every URL that may reach a log line, an error or a stored result goes through
//! [`redact_url`] first.

/// `https://user:secret@host/` → `https://user:***@host/`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{}{masked}{}", &url[..scheme_end], &url[scheme_end + at..])
        }
        None => url.to_owned(),
    }
}

/// The password in `url`'s user information, if it has one, so that messages quoting the URL
/// in other words (a library's error) can be scrubbed of it.
pub fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_found_in_user_information_only() {
        assert_eq!(url_password("socks5://u:pw@proxy:1080"), Some("pw"));
        assert_eq!(url_password("http://u@proxy:3128"), None);
        assert_eq!(url_password("http://proxy:3128/a:b@c"), None);
    }

    #[test]
    fn urls_in_results_never_carry_passwords() {
        assert_eq!(
            redact_url("https://user:s3cret@example.com/x?a=b"),
            "https://user:***@example.com/x?a=b"
        );
        assert_eq!(
            redact_url("https://token@example.com/"),
            "https://token@example.com/"
        );
        assert_eq!(
            redact_url("https://example.com/a@b"),
            "https://example.com/a@b"
        );
    }
}
