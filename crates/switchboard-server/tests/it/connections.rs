//! Connections that never finish a request: heads and bodies that stop half-way are cut
//! after their timeouts, connections are capped overall and per client address, and a
//! well-behaved client is still served (127.0.0.2 is a second client on loopback).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::*;

/// A connection from `ip` (another loopback address than the well-behaved client's).
async fn connect_from(ip: &str, addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{ip}:0").parse()?)?;
    Ok(socket.connect(addr).await?)
}

/// Whether the server closed the connection within `wait` (EOF or reset), reading and
/// discarding whatever it answered first.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn health(server: &TestServer) -> anyhow::Result<u16> {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?
        .get(format!("{}/health", server.url()))
        .send()
        .await?;
    Ok(response.status().as_u16())
}

#[tokio::test]
async fn half_sent_requests_are_cut_and_a_well_behaved_client_is_still_served() -> anyhow::Result<()>
{
    let timeout = Duration::from_millis(1500);
    let server = TestServer::start_with(|o| {
        o.limits.header_read_timeout = timeout;
        o.limits.body_read_timeout = timeout;
        o.limits.max_connections = Some(100);
        o.limits.max_connections_per_client = Some(20);
    })
    .await?;
    let addr = server.addr();
    let started = Instant::now();
    // Five whole heads with half a body (to the sign-in, which needs no credential)...
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut s = connect_from("127.0.0.2", addr).await?;
        s.write_all(
            b"POST /web/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"key\":",
        )
        .await?;
        slow.push(s);
    }
    // ...then thirty half heads: fifteen of them are over the per-client cap.
    for _ in 0..30 {
        let mut s = connect_from("127.0.0.2", addr).await?;
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n").await?;
        slow.push(s);
    }
    let mut refused = 0;
    for s in &mut slow[20..] {
        refused += usize::from(closed_within(s, Duration::from_millis(500)).await);
    }
    assert_eq!(
        refused, 15,
        "connections over the per-client cap are closed at once"
    );

    // Another client is served at once, caps and slow connections notwithstanding.
    assert_eq!(health(&server).await?, 200);
    assert!(
        started.elapsed() < timeout,
        "served before any timeout fired"
    );

    // The admitted slow connections are still open, then cut by their timeouts.
    for s in &mut slow[..20] {
        assert!(!closed_within(s, Duration::from_millis(10)).await);
    }
    for (i, s) in slow[..20].iter_mut().enumerate() {
        assert!(
            closed_within(s, timeout * 2).await,
            "slow connection {i} still open {:?} after it started",
            started.elapsed()
        );
    }
    assert!(started.elapsed() >= timeout);
    // Their places are free again.
    let mut s = connect_from("127.0.0.2", addr).await?;
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn at_the_overall_cap_new_connections_wait_for_room_and_then_are_served() -> anyhow::Result<()>
{
    let timeout = Duration::from_millis(1000);
    let server = TestServer::start_with(|o| {
        o.limits.header_read_timeout = timeout;
        o.limits.max_connections = Some(10);
        o.limits.max_connections_per_client = None;
    })
    .await?;
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut s = connect_from("127.0.0.2", server.addr()).await?;
        s.write_all(b"GET /he").await?;
        slow.push(s);
    }
    // Give the accept loop time to admit all ten.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        health(&server).await.is_err(),
        "the eleventh connection is over the cap"
    );
    // Once the slow ones are cut, the server accepts again.
    tokio::time::sleep(timeout + Duration::from_millis(500)).await;
    assert_eq!(health(&server).await?, 200);
    drop(slow);
    Ok(())
}
