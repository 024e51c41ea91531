//! Traffic of the namespace tests: code run inside a lab namespace, the real servers'
//! responder, and clients that check or count who answered through a VIP.
//!
//! Why here: the same client loops (with the same generous timeouts, chosen so that one lost
//! SYN on a loaded CI machine is not a failure) were copied per test; one copy keeps what
//! "served" means the same in every test.
#![allow(clippy::disallowed_methods)] // reason: real sockets of real-network tests

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use clusterserver::platform::linux::netsys::enter_netns;

/// A real server for `python3 -c NAME_RESPONDER NAME`: listens on TCP 8080 and answers every
/// connection with NAME, then closes it (which server served a request is then its body).
pub const NAME_RESPONDER: &str = "import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',8080))\ns.listen(64)\nwhile True:\n  c,_=s.accept()\n  c.sendall(sys.argv[1].encode())\n  c.close()\n";

/// Runs `f` on a fresh thread inside namespace `ns` (sockets it makes stay in `ns`).
pub fn in_netns<R: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> std::thread::JoinHandle<R> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(Path::new(&path)).expect("setns");
        f()
    })
}

/// One request from namespace `ns` to a line echo server at `addr`: connect, send `ping`,
/// read it back, each step within `timeout`.
pub fn echo_once(ns: &str, addr: SocketAddr, timeout: Duration) -> bool {
    in_netns(ns, move || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else { return false };
        let _ = s.set_read_timeout(Some(timeout));
        if s.write_all(b"ping\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).is_ok() && &buf == b"ping\n"
    })
    .join()
    .expect("client thread")
}

/// `n` new connections from namespace `ns` to `addr`, served by [`NAME_RESPONDER`]s: the
/// names that answered, and how many connections failed.
pub fn answered(ns: &str, addr: SocketAddr, n: usize) -> (BTreeSet<String>, usize) {
    in_netns(ns, move || {
        let mut names = BTreeSet::new();
        let mut failed = 0;
        for _ in 0..n {
            let mut body = String::new();
            // Generous: one lost SYN (retransmitted after 1 s) on a loaded CI machine is not a
            // failure of who serves; a request that never gets through still is.
            let t = Duration::from_millis(1500);
            let ok = TcpStream::connect_timeout(&addr, t).is_ok_and(|mut s| {
                let _ = s.set_read_timeout(Some(t));
                s.read_to_string(&mut body).is_ok()
            });
            if ok && !body.is_empty() {
                names.insert(body);
            } else {
                failed += 1;
            }
        }
        (names, failed)
    })
    .join()
    .expect("client")
}

/// The line [`bulk_echo`] sends as its `i`-th: 1 KiB, its number and a filler that
/// changes with it, so a lost, repeated or reordered piece shows.
fn bulk_line(i: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(format!("{i:012} ").as_bytes());
    let fill = b'a' + (i % 26) as u8;
    out.resize(1023, fill);
    out.push(b'\n');
}

/// A bulk TCP stream from namespace `ns` to a line echo server at `addr`: `bytes`
/// (rounded up to whole 1 KiB lines) written by one thread while this one reads the echo
/// and checks every byte of it. Each step may wait `patience` (a stall shows as a read
/// timeout, with how far it got). `Ok` is the number of bytes echoed back intact.
pub fn bulk_echo(ns: &str, addr: SocketAddr, bytes: u64, patience: Duration) -> Result<u64, String> {
    in_netns(ns, move || {
        let s = TcpStream::connect_timeout(&addr, patience).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(patience)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(patience)).map_err(|e| e.to_string())?;
        let lines = bytes.div_ceil(1024);
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        let writer = std::thread::spawn(move || {
            let mut line = Vec::with_capacity(1024);
            for i in 0..lines {
                bulk_line(i, &mut line);
                w.write_all(&line).map_err(|e| format!("write of line {i}: {e}"))?;
            }
            Ok::<(), String>(())
        });
        let mut r = std::io::BufReader::with_capacity(64 * 1024, s);
        let (mut want, mut got) = (Vec::with_capacity(1024), vec![0u8; 1024]);
        let mut echoed = 0u64;
        let mut result = Ok(());
        for i in 0..lines {
            bulk_line(i, &mut want);
            if let Err(e) = r.read_exact(&mut got) {
                result = Err(format!("{addr}: echo stopped after {echoed} of {} bytes: {e}", lines * 1024));
                break;
            }
            if got != want {
                result = Err(format!("{addr}: line {i} came back altered"));
                break;
            }
            echoed += 1024;
        }
        let _ = r.get_ref().shutdown(std::net::Shutdown::Both);
        let wrote = writer.join().map_err(|_| "writer panicked".to_string())?;
        result?;
        wrote?;
        Ok(echoed)
    })
    .join()
    .expect("bulk client thread")
}
