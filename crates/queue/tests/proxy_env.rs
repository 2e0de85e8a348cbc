//! Deliveries (and Hubble pulls, which share the client) never go through a proxy named in the
//! environment: a proxy resolves names itself, so the SSRF check at connect time would never run.
//! Proxy variables are read once per process, so the test runs the client in a child process of
//! its own, started with `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` pointing at a real recording proxy
//! in this process.

use hookrelay_queue::deliver::{self, Request};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CHILD: &str = "HOOKRELAY_PROXY_ENV_CHILD";
const CHILD_TEST: &str = "child_delivers_with_proxy_variables_set";

/// A forward proxy that records the request line of every connection and answers 502.
fn recording_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            record.lock().unwrap().push(line.trim_end().to_owned());
            let _ = stream.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        }
    });
    (url, seen)
}

#[test]
fn proxy_variables_in_the_environment_are_ignored() {
    let (proxy, seen) = recording_proxy();
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args([CHILD_TEST, "--exact", "--ignored", "--nocapture"])
        .env(CHILD, "1")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("REQUEST_METHOD");
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        child.env(var, &proxy);
    }
    let out = child.output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let through_proxy = seen.lock().unwrap().clone();
    assert!(
        through_proxy.is_empty(),
        "requests went through the environment's proxy: {through_proxy:?}\n{log}"
    );
    assert!(out.status.success(), "the child's checks failed:\n{log}");
    assert!(log.contains("1 passed"), "the child test ran:\n{log}");
}

/// Runs only inside the child process started above, where the proxy variables are set.
#[tokio::test]
#[ignore = "run by proxy_variables_in_the_environment_are_ignored, in a process of its own"]
async fn child_delivers_with_proxy_variables_set() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    assert!(std::env::var_os("HTTPS_PROXY").is_some());
    // A real receiver on 127.0.0.1, reached as "localhost".
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = receiver.local_addr().unwrap().port();
    let hits = Arc::new(Mutex::new(0usize));
    let counted = hits.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut stream, _)) = receiver.accept().await else {
                return;
            };
            *counted.lock().unwrap() += 1;
            let mut buf = vec![0u8; 64 * 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        }
    });
    let secret = hookrelay_signer::Secret::generate().unwrap();
    let attempt = |client: reqwest::Client, url: String, allow_private: bool| {
        let secrets = [hookrelay_signer::SigningKey::Hmac(secret.clone())];
        async move {
            let request = Request {
                delivery_id: uuid::Uuid::now_v7(),
                url: &url,
                event: "proxy.test",
                body: b"{}",
                secrets: &secrets,
                extra_headers: &[],
                hubble_token: None,
            };
            deliver::attempt(&client, &request, allow_private).await
        }
    };

    // Private targets refused: the name resolving to 127.0.0.1 is refused by the rule, over
    // http:// and https:// alike, instead of being handed to the proxy to resolve.
    let client = deliver::client(Duration::from_secs(5), false);
    for url in [
        format!("http://localhost:{port}/hook"),
        format!("https://localhost:{port}/hook"),
    ] {
        let outcome = attempt(client.clone(), url.clone(), false).await;
        assert_eq!(outcome.status, None, "{url}: {outcome:?}");
        let error = outcome.error.unwrap_or_default();
        assert!(
            error.contains("refused: the host resolves to a loopback address"),
            "{url}: {error}"
        );
        assert!(!error.contains("127.0.0.1"), "{url}: {error}");
    }
    assert_eq!(*hits.lock().unwrap(), 0);

    // Private targets allowed: the request goes straight to the receiver, not to the proxy.
    let client = deliver::client(Duration::from_secs(5), true);
    let outcome = attempt(client, format!("http://localhost:{port}/hook"), true).await;
    assert_eq!(outcome.status, Some(200), "{outcome:?}");
    assert_eq!(outcome.body_excerpt.as_ref().map(|b| b.text()), Some("ok"));
    assert_eq!(*hits.lock().unwrap(), 1);
}
