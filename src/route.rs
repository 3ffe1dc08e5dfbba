//! The routes: which paths are pages, and what each page is. Read by `app` (what a request gets),
//! by `limit` (which paths have a counter of their own) and by `response` (the page's text), so
//! that the list of paths is written once.
//!
//! Routing compares the path byte for byte, with no percent-decoding (SPEC §2): `/st%61tus` is not
//! `/status`.

/// A page we serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Page {
    Status,
    Health,
}

impl Page {
    pub const ALL: [Page; 2] = [Page::Status, Page::Health];

    /// The page at `path`, if any.
    pub fn of(path: &str) -> Option<Page> {
        Page::ALL.into_iter().find(|p| p.path() == path)
    }

    pub fn path(self) -> &'static str {
        match self {
            Page::Status => "/status",
            Page::Health => "/health",
        }
    }

    /// A short name, for the page's rate-limit counter (in Redis keys).
    pub fn name(self) -> &'static str {
        &self.path()[1..]
    }

    /// Whether plain-HTTP requests for it are redirected to HTTPS: not `/health`, which the ALB
    /// checks over plain HTTP.
    pub fn redirects(self) -> bool {
        self != Page::Health
    }

    pub fn title(self) -> &'static str {
        match self {
            Page::Status => "Status",
            Page::Health => "Health",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Page::Status => "Zayzoon rocking here! 🚀",
            Page::Health => "Status: Healthy ✅",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_compare_bytes() {
        assert_eq!(Page::of("/status"), Some(Page::Status));
        assert_eq!(Page::of("/health"), Some(Page::Health));
        for other in ["/", "/st%61tus", "/status/", "/STATUS", "/health.html", "*", ""] {
            assert_eq!(Page::of(other), None, "{other}");
        }
        assert_eq!(Page::Health.name(), "health");
    }
}
