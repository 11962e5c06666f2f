//! The demo's MQTT broker: rumqttd, embedded, on a free loopback port. A fleet runs
//! Mosquitto or another broker; the demo must run with nothing installed.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Starts the broker on a thread of its own and returns its port once it accepts
/// connections.
pub(crate) fn start() -> anyhow::Result<u16> {
    let port = free_port()?;
    // Route messages are up to 1 MiB and photo chunks 16 KiB: allow both, with headroom.
    let text = format!(
        r#"id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "demo"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 2097152
max_inflight_count = 500
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&text).context("embedded broker configuration")?;
    std::thread::Builder::new().name("demo-broker".into()).spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        if let Err(e) = broker.start() {
            tracing::error!(error = %e, "embedded broker stopped");
        }
    })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("the embedded MQTT broker did not start listening on {addr} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(port)
}

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}
