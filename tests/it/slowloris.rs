//! The plain-HTTP metrics listener bounds what anonymous clients hold:
//! slowloris connections are closed once the header-read timeout passes,
//! connections beyond the cap are closed at once, and meanwhile probes are
//! still answered.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use aitokens::telemetry::{HEADER_READ_TIMEOUT, MAX_HTTP_CONNECTIONS, Telemetry, serve_http};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::{JoinHandle, JoinSet},
};

use crate::observability::{get, get_metrics_sample};

/// Slowloris connections opened at once.
const SLOWLORIS: usize = 50;
/// How often a slowloris client sends its next byte.
const TRICKLE: Duration = Duration::from_millis(250);
/// Longest a connection is watched (and trickles).
const WATCH: Duration = Duration::from_secs(20);
/// Slack over the server's timeout for a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(3);
const REFUSED: &str = "aitokens_http_connections_refused_total";

/// A metrics listener on an ephemeral port, served by the real function.
struct Http {
    addr: SocketAddr,
    telemetry: Telemetry,
    stop: oneshot::Sender<()>,
    task: JoinHandle<aitokens::Result<()>>,
}

impl Http {
    async fn start() -> Self {
        let telemetry = Telemetry::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_http(listener, telemetry.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            telemetry,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the metrics listener stops")
            .expect("task")
            .expect("stops cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_while_probes_are_answered() {
    let http = Http::start().await;
    assert_eq!(get(http.addr, "/healthz").await, (200, "ok\n".to_owned()));

    let mut loris = JoinSet::new();
    for _ in 0..SLOWLORIS {
        // Timed from before the connect, so never after the server's clock.
        let opened = Instant::now();
        let stream = TcpStream::connect(http.addr).await.expect("connect");
        loris.spawn(trickle(stream, opened));
    }
    // A new client meanwhile: answered, although 50 connections are stuck
    // in their headers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = Instant::now();
    assert_eq!(get(http.addr, "/healthz").await.0, 200);
    let healthz = asked.elapsed();

    let mut closed = Vec::new();
    while let Some(joined) = loris.join_next().await {
        let after = joined.expect("slowloris task");
        closed.push(
            after.unwrap_or_else(|| panic!("a slowloris connection was open after {WATCH:?}")),
        );
    }
    closed.sort();
    let (first, last) = (closed[0], closed[closed.len() - 1]);
    println!(
        "slowloris: {} of {SLOWLORIS} connections closed by the server, between {first:?} and \
         {last:?} after they began to connect (header-read timeout {HEADER_READ_TIMEOUT:?}); \
         /healthz meanwhile answered in {healthz:?}",
        closed.len()
    );
    // Closed by the header-read timeout: not before it, and not much after.
    assert!(
        first >= HEADER_READ_TIMEOUT - Duration::from_millis(100),
        "{first:?}"
    );
    assert!(last <= HEADER_READ_TIMEOUT + SLACK, "{last:?}");
    assert_eq!(
        get_metrics_sample(&http.telemetry, REFUSED).await,
        Some(0.0)
    );
    http.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let http = Http::start().await;
    assert_eq!(get(http.addr, "/healthz").await, (200, "ok\n".to_owned()));

    let mut held = Vec::new();
    for _ in 0..MAX_HTTP_CONNECTIONS {
        held.push(TcpStream::connect(http.addr).await.expect("connect"));
    }
    let opened = Instant::now();
    let mut extra = TcpStream::connect(http.addr).await.expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(HEADER_READ_TIMEOUT, extra.read(&mut buf)).await;
    let closed_after = opened.elapsed();
    println!(
        "with {MAX_HTTP_CONNECTIONS} connections open, one more was closed after \
         {closed_after:?} (header-read timeout {HEADER_READ_TIMEOUT:?})"
    );
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the connection over the cap was not closed: {read:?}"
    );
    // At once, so not by the header-read timeout: by the cap.
    assert!(closed_after < HEADER_READ_TIMEOUT / 2, "{closed_after:?}");
    assert_eq!(
        get_metrics_sample(&http.telemetry, REFUSED).await,
        Some(1.0)
    );
    // The connections within the cap are still open.
    for stream in &held {
        let mut byte = [0u8; 1];
        let open = matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(open, "a connection within the cap was closed");
    }

    // Once they go, their slots are free again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while healthz_status(http.addr).await != Some(200) {
        assert!(Instant::now() < deadline, "slots not freed within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    http.stop().await;
}

/// Sends a request line and headers one byte per [`TRICKLE`], never
/// finishing them, until the server closes the connection; returns how long
/// after `opened` that was, or `None` if still open after [`WATCH`].
async fn trickle(mut stream: TcpStream, opened: Instant) -> Option<Duration> {
    let head = b"GET /metrics HTTP/1.1\r\nHost: aitokens\r\n";
    let filler = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut bytes = head.iter().chain(filler.iter().cycle());
    let mut buf = [0u8; 256];
    while opened.elapsed() < WATCH {
        let byte = *bytes.next().expect("endless");
        if stream.write_all(&[byte]).await.is_err() {
            return Some(opened.elapsed());
        }
        let read = tokio::time::timeout(TRICKLE, stream.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            return Some(opened.elapsed());
        }
    }
    None
}

/// The status of `GET /healthz`, or `None` if the connection was closed
/// without an answer.
async fn healthz_status(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1)?.parse().ok()
}
