//! Real-time scheduling for the heartbeat thread (`timers.realtime_priority`).
//!
//! `SCHED_FIFO` at priority N (1..=99) runs the thread before every normal (`SCHED_OTHER`)
//! thread of the machine as soon as it is runnable: a heartbeat deadline or an arriving
//! heartbeat wakes it within the kernel's wake-up latency however busy the CPUs are with the
//! data plane, the load generators or anything else. The thread sleeps between heartbeats,
//! so it takes a few microseconds of CPU per heartbeat and cannot starve the machine.
//!
//! It needs `CAP_SYS_NICE`, or an `RLIMIT_RTPRIO` of at least N (systemd:
//! `AmbientCapabilities=CAP_SYS_NICE` or `LimitRTPRIO=N`). Without either, the kernel
//! refuses with `EPERM`: the daemon warns once and runs the thread at normal priority
//! (never fatal: a missed privilege must not stop a load balancer).
//!
//! No `mlockall`: it would pin the whole process, the data plane's connection table
//! included (hundreds of MB at a million connections), and fail or thrash under a small
//! `RLIMIT_MEMLOCK`. The heartbeat thread's working set is a few pages touched every
//! heartbeat, which stay resident unless the host is swapping (and a swapping load balancer
//! has bigger problems than heartbeat jitter).
#![allow(unsafe_code)]

use std::io;

/// Puts the calling thread on `SCHED_FIFO` at `priority` (1..=99), or back on normal
/// scheduling with 0.
pub fn set_current_thread(priority: u8) -> io::Result<()> {
    let policy = if priority == 0 { libc::SCHED_OTHER } else { libc::SCHED_FIFO };
    let param = libc::sched_param { sched_priority: i32::from(priority) };
    // SAFETY: `param` is a valid, initialised `sched_param` that lives across the call; pid 0
    // is the calling thread (Linux schedules threads individually).
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The calling thread's (policy is FIFO, priority).
pub fn current_thread() -> io::Result<(bool, u8)> {
    // SAFETY: no arguments but the calling thread's id 0.
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid out-parameter for the duration of the call.
    let rc = unsafe { libc::sched_getparam(0, &mut param) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((policy == libc::SCHED_FIFO, u8::try_from(param.sched_priority).unwrap_or(0)))
}

/// Applies `priority` to the calling thread and logs the outcome: one `info` line when set,
/// one `warn` line (with the capability it needs) when refused.
pub fn apply_logged(thread: &str, priority: u8) {
    match set_current_thread(priority) {
        Ok(()) if priority > 0 => {
            tracing::info!(target: "clusterserverd", thread, priority, "real-time priority (SCHED_FIFO) set")
        }
        Ok(()) => tracing::info!(target: "clusterserverd", thread, "normal scheduling"),
        Err(e) => tracing::warn!(
            target: "clusterserverd",
            thread,
            priority,
            error = %e,
            "timers.realtime_priority refused: the heartbeat thread runs at normal priority (grant CAP_SYS_NICE, e.g. systemd AmbientCapabilities=CAP_SYS_NICE, or LimitRTPRIO={priority})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a thread of its own (the test harness's threads stay as they are): FIFO where
    /// the process may (root, CAP_SYS_NICE), EPERM otherwise, and back to normal.
    #[test]
    fn fifo_is_set_or_refused_with_eperm() {
        std::thread::spawn(|| match set_current_thread(10) {
            Ok(()) => {
                assert_eq!(current_thread().unwrap(), (true, 10));
                set_current_thread(0).unwrap();
                assert_eq!(current_thread().unwrap(), (false, 0));
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                println!("no CAP_SYS_NICE here: checked the refusal only");
            }
        })
        .join()
        .unwrap();
    }
}
