//! The dashboard at `/ui` (CONTRACT §11): static files compiled into the binary and served with
//! a strict Content-Security-Policy. The page holds no data of its own: it signs in with an API
//! key and calls the public `/api/v1` like any client, so scopes apply exactly as elsewhere.
//!
//! `/ui` is not an API operation: it is not in the OpenAPI document, needs no key (the files are
//! the same for everyone), and is exempt from load shedding like `/docs` (it touches no database).

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, guard, web};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

use crate::problem::ApiError;

/// Same origin only, no inline script or style, no framing, no form posts anywhere: the only
/// way the page talks to anything is `fetch` to this service.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
pub struct Asset {
    /// The name under `/ui/`.
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the dashboard; `index.html` is also what `/ui` and `/ui/` answer.
pub const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("chart.js", JS),
    asset!("views.js", JS),
    asset!("webhooks.js", JS),
    asset!("catalog.js", JS),
];

/// Strong validators, computed once: the files change only with the binary.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    let read = || guard::Any(guard::Get()).or(guard::Head());
    cfg.service(
        web::scope("/ui")
            // Compressed on the way out (gzip when the browser asks): the files are text.
            .wrap(actix_web::middleware::Compress::default())
            .route("", web::route().guard(read()).to(index))
            .route("/", web::route().guard(read()).to(index))
            .route("/{file}", web::route().guard(read()).to(file)),
    );
}

async fn index(req: HttpRequest) -> HttpResponse {
    serve(&req, 0)
}

async fn file(req: HttpRequest, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let index = ASSETS
        .iter()
        .position(|a| a.name == name.as_str())
        .ok_or(ApiError::NotFound("file"))?;
    Ok(serve(&req, index))
}

fn serve(req: &HttpRequest, index: usize) -> HttpResponse {
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag.as_str()))
        // Revalidated on every load (a cheap 304): a new binary's files are picked up at once,
        // without fingerprinted names.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"));
    if fresh {
        return response.finish();
    }
    response.content_type(asset.content_type).body(asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::App;
    use actix_web::dev::ServiceResponse;
    use actix_web::test::{TestRequest, call_service, init_service, read_body};

    fn header(resp: &ServiceResponse, name: header::HeaderName) -> String {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    #[actix_web::test]
    async fn serves_every_asset_with_its_type_policy_and_validator() {
        let app = init_service(App::new().configure(configure)).await;
        for (i, asset) in ASSETS.iter().enumerate() {
            let req = TestRequest::get()
                .uri(&format!("/ui/{}", asset.name))
                .to_request();
            let resp = call_service(&app, req).await;
            assert_eq!(resp.status(), 200, "{}", asset.name);
            assert_eq!(header(&resp, header::CONTENT_TYPE), asset.content_type);
            assert_eq!(
                header(&resp, header::CONTENT_SECURITY_POLICY),
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(header(&resp, header::ETAG), etags()[i]);
            assert_eq!(&read_body(resp).await[..], asset.body);
        }
        for path in ["/ui", "/ui/"] {
            let resp = call_service(&app, TestRequest::get().uri(path).to_request()).await;
            assert_eq!(resp.status(), 200);
            assert_eq!(header(&resp, header::CONTENT_TYPE), ASSETS[0].content_type);
        }
        let head = TestRequest::default()
            .method(actix_web::http::Method::HEAD)
            .uri("/ui/style.css")
            .to_request();
        assert_eq!(call_service(&app, head).await.status(), 200);
    }

    #[actix_web::test]
    async fn a_known_validator_gets_304_and_an_unknown_file_404() {
        let app = init_service(App::new().configure(configure)).await;
        let req = TestRequest::get()
            .uri("/ui/app.js")
            .insert_header((header::IF_NONE_MATCH, etags()[3].as_str()))
            .to_request();
        let resp = call_service(&app, req).await;
        assert_eq!(resp.status(), 304);
        assert!(read_body(resp).await.is_empty());
        let req = TestRequest::get()
            .uri("/ui/app.js")
            .insert_header((header::IF_NONE_MATCH, "\"stale\""))
            .to_request();
        assert_eq!(call_service(&app, req).await.status(), 200);
        for path in ["/ui/nope.js", "/ui/..%2Fsrc%2Flib.rs", "/ui/a/b", "/ui/%00"] {
            let req = TestRequest::get().uri(path).to_request();
            assert_eq!(call_service(&app, req).await.status(), 404, "{path}");
        }
    }

    #[test]
    fn no_inline_script_or_style_in_the_page() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(!html.contains("<script>") && !html.contains("style="));
        assert!(!html.contains("<style"));
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.body).unwrap().replace(' ', "");
            // Nothing loaded from another host (the CSP would refuse it anyway).
            for load in [
                "from'http",
                "src=\"http",
                "href=\"http",
                "url(http",
                "fetch('http",
                "//cdn",
            ] {
                assert!(!text.contains(load), "{} loads {load}…", asset.name);
            }
        }
    }
}
