//! What the TUN shell tests (`tests/tun_nat.rs`) add to [`super::netlab`]: their
//! client -- ATM -- server topology, the shell on a thread in a namespace, and a checking TCP
//! client (SPEC.md, lab safety: `csl-` names, no veth end in the root namespace, bounded
//! loads, everything removed by the [`NetLab`] guard).
#![allow(clippy::disallowed_methods)] // reason: a real-network test measures and waits on the wall clock

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clusterserver::platform::linux::netsys::enter_netns;
use clusterserver::platform::linux::shell::netlink::SteerRule;
use clusterserver::platform::linux::shell::tun::{Control, Shell};
use clusterserver::platform::linux::shell::{PacketProcessor, ShellConfig, StatsSnapshot};

use super::netlab::NetLab;
use super::{in_ns, is_root, ns_output, run};

pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 1);
pub const PORT: u16 = 8080;
/// Bytes the client sends (and expects back).
pub const PAYLOAD: usize = 10 * 1024 * 1024;
/// Set in the environment of the helper server process (its listen address).
pub const HELPER_ENV: &str = "CSL_TN_HELPER";
/// Distinguishes the labs of tests running in parallel in one process.
static LABS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn can_run() -> bool {
    let ok = is_root() && Path::new("/dev/net/tun").exists() && Command::new("ip").arg("-V").output().is_ok();
    if !ok {
        println!("SKIPPED: needs root/TUN (and iproute2)");
        eprintln!("SKIPPED: needs root/TUN (and iproute2)");
    }
    ok
}

/// A lab of namespaces `csl-tn<pid>-<n>-*` (`n` tells apart the labs of tests running in
/// parallel in one process); stale ones of killed runs are removed first.
pub fn lab() -> NetLab {
    NetLab::new("csl-tn", &format!("-{}", LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
}

/// client (c0) -- (a0) atm (a1) -- (s0) server; routes via the ATM both ways.
pub fn topology(lab: &mut NetLab) -> (String, String, String) {
    let (c, a, s) = (lab.add_ns("client"), lab.add_ns("atm"), lab.add_ns("server"));
    // Before the links exist, so they inherit it: the ATM forwards packets whose source
    // routes through another interface (the TUN), and the kernel takes max(all, dev).
    for ns in [&a, &s] {
        in_ns(ns, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
        in_ns(ns, &["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"]);
    }
    run(&["ip", "link", "add", "c0", "netns", &c, "type", "veth", "peer", "name", "a0", "netns", &a]);
    run(&["ip", "link", "add", "s0", "netns", &s, "type", "veth", "peer", "name", "a1", "netns", &a]);
    for (ns, dev, addr) in [
        (&c, "c0", "10.77.1.2/24"),
        (&a, "a0", "10.77.1.1/24"),
        (&a, "a1", "10.77.2.1/24"),
        (&s, "s0", "10.77.2.2/24"),
    ] {
        in_ns(ns, &["ip", "addr", "add", addr, "dev", dev]);
        in_ns(ns, &["ip", "link", "set", dev, "up"]);
    }
    in_ns(&c, &["ip", "route", "add", "default", "via", "10.77.1.1"]);
    in_ns(&s, &["ip", "route", "add", "default", "via", "10.77.2.1"]);
    in_ns(&a, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    (c, a, s)
}

/// What the shell thread reports when it stops: counters and processors, or an error.
pub type ShellOutcome<P> = Result<(StatsSnapshot, Vec<P>), String>;

/// Starts the shell on a thread inside `ns`; returns a control sender (`Some(change)` applies
/// a change to the processors, `None` stops) and the outcome receiver.
pub fn start_shell<P: PacketProcessor + 'static>(
    ns: &str,
    cfg: ShellConfig,
    steer: Vec<SteerRule>,
    make: impl FnMut(usize) -> P + Send + 'static,
) -> (mpsc::Sender<Option<Control<P>>>, mpsc::Receiver<ShellOutcome<P>>) {
    start_shell_with(ns, move || Shell::start(cfg, steer, make))
}

/// Like [`start_shell`] with one processor shared by every queue ([`Shell::start_shared`]).
pub fn start_shell_shared<P: PacketProcessor + 'static>(
    ns: &str,
    cfg: ShellConfig,
    steer: Vec<SteerRule>,
    processor: P,
) -> (mpsc::Sender<Option<Control<P>>>, mpsc::Receiver<ShellOutcome<P>>) {
    start_shell_with(ns, move || Shell::start_shared(cfg, steer, processor))
}

fn start_shell_with<P: PacketProcessor + 'static>(
    ns: &str,
    start: impl FnOnce() -> Result<Shell<P>, clusterserver::platform::linux::shell::ShellError> + Send + 'static,
) -> (mpsc::Sender<Option<Control<P>>>, mpsc::Receiver<ShellOutcome<P>>) {
    let (stop_tx, stop_rx) = mpsc::channel::<Option<Control<P>>>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (done_tx, done_rx) = mpsc::channel();
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        if let Err(e) = enter_netns(Path::new(&path)) {
            let _ = ready_tx.send(Err(format!("setns: {e}")));
            return;
        }
        let shell = match start() {
            Ok(s) => s,
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        // `Some(change)`: apply it to every processor. Stop on `None`, or when the test thread
        // goes away (panic): the sender drops.
        while let Ok(Some(change)) = stop_rx.recv() {
            shell.apply(change).expect("apply");
        }
        let _ = done_tx.send(shell.stop().map_err(|e| e.to_string()));
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("shell start timed out").expect("shell start");
    (stop_tx, done_rx)
}

/// Interface and protocol counters of a namespace, for failure messages.
pub fn diag(ns: &str) -> String {
    format!("{}{}", ns_output(ns, &["ip", "-s", "-br", "link"]), ns_output(ns, &["nstat", "-as"]))
}

pub fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

/// Client: connect to `addr` from inside `ns`, send PAYLOAD bytes, read them echoed back.
pub fn run_client(ns: &str, addr: SocketAddr) -> Result<(usize, Duration), String> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(Path::new(&path)).map_err(|e| format!("setns: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(format!("connect: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        let sender = std::thread::spawn(move || -> std::io::Result<()> {
            let chunk: Vec<u8> = (0..65536).map(pattern).collect();
            let mut sent = 0;
            while sent < PAYLOAD {
                let n = (PAYLOAD - sent).min(chunk.len());
                // Chunk boundaries are multiples of 65536, a multiple of the pattern period.
                writer.write_all(&chunk[..n])?;
                sent += n;
            }
            writer.shutdown(std::net::Shutdown::Write)
        });
        let mut reader = stream;
        let mut buf = vec![0u8; 65536];
        let mut got = 0usize;
        loop {
            let n = reader.read(&mut buf).map_err(|e| format!("read after {got}: {e}"))?;
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                if *b != pattern((got + k) % 65536) {
                    return Err(format!("byte {} differs", got + k));
                }
            }
            got += n;
        }
        sender.join().map_err(|_| "sender panicked")?.map_err(|e| format!("send: {e}"))?;
        Ok((got, start.elapsed()))
    })
    .join()
    .map_err(|_| "client panicked".to_string())?
}
