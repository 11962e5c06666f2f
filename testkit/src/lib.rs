//! What Doorstep's tests and its demo share, so each piece exists once:
//!
//! - [`browser`]: headless Chromium over WebDriver, with axe-core's accessibility check,
//!   for the tracking page and the operations console;
//! - [`pty`]: a pseudo-terminal standing in for the van's GNSS serial port;
//! - [`postgres`]: a real PostgreSQL per test (initdb into a temporary directory, a
//!   free port), for the hubs that share one database;
//! - [`mosquitto`]: a real Mosquitto per test, on a free loopback port, that can be
//!   killed, restarted and given a TLS listener;
//! - [`driver`]: the driver app's side of the agent's socket, speaking
//!   [`doorstep_agent::driver::Request`];
//! - [`webhooks`]: carrier webhook signatures computed as each carrier documents them.
//!
//! It is a development crate: nothing the agent or the hub ships depends on it.

pub mod browser;
pub mod driver;
pub mod mosquitto;
pub mod netns;
pub mod postgres;
pub mod pty;
pub mod webhooks;
