//! The web UI: three pages (sign-in and invitation, tenant admin, vendor admin), a style sheet
//! and small ES modules, all embedded in the binary (no build step, nothing fetched from
//! elsewhere). Every response carries a strict Content-Security-Policy (scripts and styles from
//! this origin only, no inline code), `nosniff`, no referrer and `Cache-Control: no-cache`, so a
//! new broker version is picked up at once.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;

/// The Content-Security-Policy of every UI response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// The pages, by route.
const PAGES: &[(&str, &str)] = &[
    ("/", include_str!("../ui/index.html")),
    ("/tenant", include_str!("../ui/tenant.html")),
    ("/vendor", include_str!("../ui/vendor.html")),
];

/// The assets under `/ui/`: name, content type, text.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.css", CSS, include_str!("../ui/app.css")),
    ("api.js", JS, include_str!("../ui/api.js")),
    ("login.js", JS, include_str!("../ui/login.js")),
    ("tenant.js", JS, include_str!("../ui/tenant.js")),
    ("vendor.js", JS, include_str!("../ui/vendor.js")),
    ("seal.js", JS, include_str!("../ui/seal.js")),
];

/// The UI's routes, to merge into the API's router (any state).
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let mut router = Router::new();
    for &(path, body) in PAGES {
        router = router.route(path, get(move || async move { respond(HTML, body) }));
    }
    router.route("/ui/{file}", get(asset))
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some(&(_, content_type, body)) => respond(content_type, body),
        None => ApiError::NoRoute.into_response(),
    }
}

fn respond(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    (StatusCode::OK, headers, body).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get_path(path: &str) -> Response {
        let app: Router = router();
        app.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap()
    }

    fn header<'a>(response: &'a Response, name: &HeaderName) -> &'a str {
        response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    #[tokio::test]
    async fn pages_carry_the_security_headers() {
        for path in ["/", "/tenant", "/vendor"] {
            let response = get_path(path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&response, &header::CONTENT_TYPE), HTML, "{path}");
            assert_eq!(
                header(&response, &header::CONTENT_SECURITY_POLICY),
                CONTENT_SECURITY_POLICY,
                "{path}"
            );
            assert_eq!(header(&response, &header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert_eq!(header(&response, &header::REFERRER_POLICY), "no-referrer");
            assert_eq!(header(&response, &header::CACHE_CONTROL), "no-cache");
        }
    }

    #[tokio::test]
    async fn scripts_are_javascript_and_styles_css() {
        for (name, _, _) in ASSETS {
            let response = get_path(&format!("/ui/{name}")).await;
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            let expected = if name.ends_with(".js") { "text/javascript" } else { "text/css" };
            assert!(header(&response, &header::CONTENT_TYPE).starts_with(expected), "{name}");
            assert_eq!(header(&response, &header::CACHE_CONTROL), "no-cache");
        }
        assert_eq!(get_path("/ui/nope.js").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(get_path("/ui/../Cargo.toml").await.status(), StatusCode::NOT_FOUND);
    }

    /// No inline script, style or event handler: the CSP would block them.
    #[test]
    fn pages_have_no_inline_code() {
        for (path, body) in PAGES {
            let lower = body.to_ascii_lowercase();
            assert!(!lower.contains("<script>"), "{path}: inline script");
            assert!(!lower.contains("<style"), "{path}: inline style");
            assert!(!lower.contains(" style="), "{path}: style attribute");
            assert!(!lower.contains(" onclick=") && !lower.contains(" onsubmit="), "{path}");
            assert!(!lower.contains("http://") && !lower.contains("https://"), "{path}: remote");
        }
    }
}
