//! The `syslog` sink: one RFC 5424 message per event, over UDP (RFC 5426) or TCP with
//! octet-counting framing (RFC 6587, section 3.4.1).
//!
//! A message reads `<PRI>1 TIMESTAMP HOSTNAME latchkey PROCID audit - MSG`. PRI combines
//! the configured facility with a severity from the outcome (allowed: 6 informational,
//! denied: 5 notice, failed: 4 warning). TIMESTAMP is the event's own time, HOSTNAME comes
//! from the config, and MSG is the event as one JSON object, chain hashes included.
//! Structured data is left empty (`-`), because an SD-ID of our own would need an IANA
//! enterprise number.
//!
//! NOTE: a UDP datagram carries at most 65,507 bytes and many receivers accept far less
//! (RFC 5426 only requires 480). A large event may arrive cut short over UDP; use TCP
//! when completeness matters.

use std::net::SocketAddr;
use std::sync::Arc;

use latchkey_core::audit::{AuditEvent, Outcome};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use super::SyslogProtocol;

pub struct SyslogSink {
    address: SocketAddr,
    protocol: SyslogProtocol,
    facility: u8,
    hostname: String,
    procid: String,
    connection: Option<Connection>,
}

enum Connection {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl SyslogSink {
    pub fn new(
        address: SocketAddr,
        protocol: SyslogProtocol,
        facility: u8,
        hostname: String,
    ) -> SyslogSink {
        SyslogSink {
            address,
            protocol,
            facility,
            hostname,
            procid: std::process::id().to_string(),
            connection: None,
        }
    }

    pub fn disconnect(&mut self) {
        self.connection = None;
    }

    async fn connect(&self) -> std::io::Result<Connection> {
        Ok(match self.protocol {
            SyslogProtocol::Udp => {
                let local: SocketAddr = if self.address.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                let socket = UdpSocket::bind(local).await?;
                socket.connect(self.address).await?;
                Connection::Udp(socket)
            }
            SyslogProtocol::Tcp => {
                let stream = TcpStream::connect(self.address).await?;
                stream.set_nodelay(true)?;
                Connection::Tcp(stream)
            }
        })
    }

    /// Sends one message per event; on TCP the whole batch goes out in one write.
    pub async fn send(&mut self, events: &[Arc<AuditEvent>]) -> Result<(), String> {
        let messages = events
            .iter()
            .map(|event| format_message(event, self.facility, &self.hostname, &self.procid))
            .collect::<Result<Vec<_>, _>>()?;
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => self
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.address))?,
        };
        send_on(&mut connection, &messages)
            .await
            .map_err(|e| format!("cannot send to {}: {e}", self.address))?;
        // Kept only after a success: a failed connection is replaced on the next attempt.
        self.connection = Some(connection);
        Ok(())
    }
}

async fn send_on(connection: &mut Connection, messages: &[String]) -> std::io::Result<()> {
    match connection {
        Connection::Udp(socket) => {
            for message in messages {
                socket.send(message.as_bytes()).await?;
            }
            Ok(())
        }
        Connection::Tcp(stream) => {
            let mut frames = Vec::new();
            for message in messages {
                frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
                frames.extend_from_slice(message.as_bytes());
            }
            stream.write_all(&frames).await?;
            stream.flush().await
        }
    }
}

/// Formats one event as an RFC 5424 message.
pub fn format_message(
    event: &AuditEvent,
    facility: u8,
    hostname: &str,
    procid: &str,
) -> Result<String, String> {
    let severity = match event.record.outcome {
        Outcome::Allowed => 6,
        Outcome::Denied => 5,
        Outcome::Failed => 4,
    };
    let priority = u16::from(facility) * 8 + severity;
    let json = serde_json::to_string(event).map_err(|e| e.to_string())?;
    Ok(format!(
        "<{priority}>1 {} {hostname} latchkey {procid} audit - {json}",
        event.record.time
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use latchkey_core::audit::{AuditRecord, GENESIS_HASH, seal_event};

    #[test]
    fn message_has_the_rfc5424_header() {
        let record = AuditRecord {
            time: "2026-12-04T10:00:00.123456Z".into(),
            request_id: "req-1".into(),
            principal: r#"User::"alice""#.into(),
            action: "read".into(),
            resource: r#"Secret::"prod/db""#.into(),
            outcome: Outcome::Denied,
            reason: Some("permission_denied".into()),
            policies: vec![],
            client_addr: None,
            token_id: None,
            detail: Default::default(),
        };
        let event = seal_event(7, &GENESIS_HASH, record);
        let message = format_message(&event, 10, "lk-1", "42").unwrap();
        assert!(
            message.starts_with("<85>1 2026-12-04T10:00:00.123456Z lk-1 latchkey 42 audit - {"),
            "{message}"
        );
        let json: serde_json::Value =
            serde_json::from_str(message.split_once(" - ").unwrap().1).unwrap();
        assert_eq!(json["seq"], 7);
        assert_eq!(json["hash"], event.hash);
    }
}
