//! `fake-anthropic [ADDR]`: runs the fake Messages API on a loopback address (default
//! `127.0.0.1:0`) and prints `listening on http://ADDR` once it accepts connections.

use std::net::SocketAddr;

use anyhow::Context as _;
use switchboard_testkit::fake_anthropic::FakeAnthropic;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned())
        .parse()
        .context("the argument must be a socket address such as 127.0.0.1:0")?;
    let fake = FakeAnthropic::start_on(addr, FakeAnthropic::stall()).await?;
    println!("listening on {}", fake.base_url());
    fake.wait().await;
    Ok(())
}
