//! A small HTTP/1.1 server on 127.0.0.1 for probing, with the routes the checker tests need,
//! and a TLS server with a self-signed certificate. Every response closes its connection.
//!
//! - `/ok`: 200 with a page that mentions Aiven
//! - `/status/N`: status N
//! - `/redirect/N`: N redirects, then 200
//! - `/loop`: redirects to itself forever
//! - `/slow/MS`: 200 after MS milliseconds
//! - `/big/BYTES`: 200 with a body of BYTES bytes
//! - `/headers`: 200 with the request's head (request line and headers) as the body
//! - `/regional`: 503 to a request whose `X-Region` header names a region set down with
//!   [`set_region_down`], else 200: a scripted outage seen from some regions only

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const OK_PAGE: &str =
    "<html><body><h1>Welcome to the Aiven test page</h1><p>version 4.2</p></body></html>";

pub struct TestServer {
    pub addr: SocketAddr,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Starts the server on a free port; it runs until the test's runtime ends.
pub async fn start() -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(stream));
        }
    });
    TestServer { addr }
}

async fn serve(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut buffer = [0_u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (status, headers, body): (u16, Vec<String>, Vec<u8>) = route(&path, &head).await;
    let reason = match status {
        200 => "OK",
        302 => "Found",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for header in headers {
        response.push_str(&header);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

/// The regions `/regional` answers 503 to.
static REGIONS_DOWN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Makes `/regional` fail (or work again) for requests from `region`.
pub fn set_region_down(region: &str, down: bool) {
    let mut regions = REGIONS_DOWN.lock().unwrap();
    if down {
        regions.insert(region.to_owned());
    } else {
        regions.remove(region);
    }
}

fn region_down(head: &str) -> bool {
    let region = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("x-region")
            .then(|| value.trim().to_owned())
    });
    region.is_some_and(|r| REGIONS_DOWN.lock().unwrap().contains(&r))
}

async fn route(path: &str, head: &str) -> (u16, Vec<String>, Vec<u8>) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["ok"] => (200, vec!["Content-Type: text/html".into()], OK_PAGE.into()),
        ["status", code] => (code.parse().unwrap_or(400), vec![], b"status".to_vec()),
        ["redirect", n] => match n.parse::<u32>().unwrap_or(0) {
            0 => (200, vec![], b"redirected".to_vec()),
            n => (302, vec![format!("Location: /redirect/{}", n - 1)], vec![]),
        },
        ["loop"] => (302, vec!["Location: /loop".into()], vec![]),
        ["slow", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            (200, vec![], b"finally".to_vec())
        }
        ["big", bytes] => (200, vec![], vec![b'x'; bytes.parse().unwrap_or(0)]),
        ["headers"] => (200, vec![], head.as_bytes().to_vec()),
        ["regional"] if region_down(head) => (503, vec![], b"down from here".to_vec()),
        ["regional"] => (200, vec![], b"up from here".to_vec()),
        _ => (404, vec![], b"no such route".to_vec()),
    }
}

/// A port on 127.0.0.1 where nothing listens: connecting is refused.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A TLS server whose certificate no client trusts: a probe must report a `tls` failure.
pub fn start_self_signed_tls() -> SocketAddr {
    let (cert, key) = super::tls::self_signed("localhost");
    start_tls(&cert, &key)
}

/// A TLS server on 127.0.0.1 presenting `cert`, answering every request with 200.
pub fn start_tls(
    cert: &openssl::x509::X509,
    key: &openssl::pkey::PKey<openssl::pkey::Private>,
) -> SocketAddr {
    use openssl::ssl::{SslAcceptor, SslMethod};

    let mut acceptor = SslAcceptor::mozilla_intermediate(SslMethod::tls()).unwrap();
    acceptor.set_private_key(key).unwrap();
    acceptor.set_certificate(cert).unwrap();
    let acceptor = acceptor.build();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let acceptor = acceptor.clone();
            std::thread::spawn(move || {
                if let Ok(mut tls) = acceptor.accept(stream) {
                    use std::io::Write;
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                }
            });
        }
    });
    addr
}
