//! Error messages for people: an error and the causes behind it, in one line.
//!
//! Libraries such as reqwest keep the useful part ("invalid peer certificate: UnknownIssuer",
//! "Connection refused") in an error's sources, behind a message that only names the request.

use std::error::Error;

/// `err` and its sources, one after the other, separated by `": "`, without repeating a source
/// whose message its parent's already includes.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut current = err.source();
    while let Some(e) = current {
        let message = e.to_string();
        if !out.contains(&message) {
            out.push_str(": ");
            out.push_str(&message);
        }
        current = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    #[test]
    fn sources_follow_their_parent_once_each() {
        let err = Layer(
            "error sending request",
            Some(Box::new(Layer(
                "client error (Connect)",
                Some(Box::new(Layer("invalid peer certificate: UnknownIssuer", None))),
            ))),
        );
        assert_eq!(
            chain(&err),
            "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer"
        );
        // A source its parent already quotes is not said twice.
        let quoted = Layer("read failed: timed out", Some(Box::new(Layer("timed out", None))));
        assert_eq!(chain(&quoted), "read failed: timed out");
        assert_eq!(chain(&Layer("alone", None)), "alone");
    }
}
