//! A small DNS server for the tests: UDP and TCP on port 53 of an address in a pod's
//! namespace, answering every query after a fixed delay, with NXDOMAIN or SERVFAIL for chosen
//! names, and not at all for others (to make clients time out). Answers carry the question
//! and no records; that is all the `dns` probe looks at. Stopped when dropped.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::in_netns;

/// How a name is answered.
#[derive(Clone, Debug, Default)]
pub struct DnsAnswers {
    /// Delay before each answer.
    pub delay: Duration,
    pub nxdomain: Vec<String>,
    pub servfail: Vec<String>,
    /// Names never answered.
    pub silent: Vec<String>,
}

pub struct DnsServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The first name of a DNS message's question, dotted.
fn question_name(msg: &[u8]) -> String {
    let mut labels = Vec::new();
    let mut i = 12;
    while let Some(&len) = msg.get(i) {
        if len == 0 || len & 0xc0 != 0 {
            break;
        }
        let start = i + 1;
        let end = start + len as usize;
        let Some(label) = msg.get(start..end) else {
            break;
        };
        labels.push(String::from_utf8_lossy(label).into_owned());
        i = end;
    }
    labels.join(".")
}

/// The answer to `query`, or none for a silent name.
fn answer(query: &[u8], answers: &DnsAnswers) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let name = question_name(query);
    if answers.silent.contains(&name) {
        return None;
    }
    let rcode = if answers.nxdomain.contains(&name) {
        3
    } else if answers.servfail.contains(&name) {
        2
    } else {
        0
    };
    std::thread::sleep(answers.delay);
    let mut out = query.to_vec();
    // QR, the query's opcode and RD, RA, then the rcode; no answer records.
    out[2] = 0x80 | (query[2] & 0x79);
    out[3] = 0x80 | rcode;
    out[6..12].fill(0);
    Some(out)
}

impl DnsServer {
    /// Serves on `ip`:53 (UDP and TCP) inside namespace `netns`.
    pub fn start(netns: &str, ip: IpAddr, answers: DnsAnswers) -> DnsServer {
        let addr = SocketAddr::new(ip, 53);
        let (udp, tcp) = in_netns(netns, || {
            (
                UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}")),
                TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}")),
            )
        });
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let udp_thread = {
            let (stop, answers) = (Arc::clone(&stop), answers.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    // One thread per query, so that delays overlap as a real server's would.
                    let (udp, query, answers) =
                        (udp.try_clone().unwrap(), buf[..n].to_vec(), answers.clone());
                    std::thread::spawn(move || {
                        if let Some(reply) = answer(&query, &answers) {
                            let _ = udp.send_to(&reply, peer);
                        }
                    });
                }
            })
        };
        let tcp_thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((conn, _)) => {
                            let answers = answers.clone();
                            std::thread::spawn(move || serve_tcp(conn, &answers));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        DnsServer {
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }
}

fn serve_tcp(mut conn: TcpStream, answers: &DnsAnswers) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut len = [0u8; 2];
    while conn.read_exact(&mut len).is_ok() {
        let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
        if conn.read_exact(&mut query).is_err() {
            return;
        }
        if let Some(reply) = answer(&query, answers) {
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if conn.write_all(&framed).is_err() {
                return;
            }
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A query for `name` (type A) with id `id`.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Sends a query over UDP from a socket in `netns` and returns the response's rcode, or none
/// when none came within `wait`.
pub fn udp_query(
    netns: &str,
    server: SocketAddr,
    id: u16,
    name: &str,
    wait: Duration,
) -> Option<u8> {
    let socket = in_netns(netns, || {
        let any: IpAddr = match server {
            SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        UdpSocket::bind(SocketAddr::new(any, 0)).expect("bind a client socket")
    });
    socket.set_read_timeout(Some(wait)).unwrap();
    socket
        .send_to(&dns_query(id, name), server)
        .expect("send the query");
    let mut buf = [0u8; 1500];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    (n >= 4 && buf[..2] == id.to_be_bytes()).then(|| buf[3] & 0xf)
}

/// Sends a query over TCP from `netns` and returns the response's rcode.
pub fn tcp_query(netns: &str, server: SocketAddr, id: u16, name: &str) -> u8 {
    let mut conn = in_netns(netns, || {
        TcpStream::connect_timeout(&server, Duration::from_secs(10)).expect("connect to DNS")
    });
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let q = dns_query(id, name);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    conn.write_all(&framed).expect("send the query");
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).expect("the response's length");
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    conn.read_exact(&mut reply).expect("the response");
    reply[3] & 0xf
}
